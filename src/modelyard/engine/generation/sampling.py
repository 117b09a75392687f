"""Choosing the next token from logits: greedy at temperature 0, else temperature + top-p.

Each sequence samples with its own ``torch.Generator``, so a seeded request draws the same
random numbers whatever else shares its batch.
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["make_generator", "next_tokens"]


def make_generator(device: str, seed: int | None) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (a random seed when ``None``)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
    return gen


def _sample_row(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    scaled = logits.float() / temperature
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep a token when the mass before it is still below top_p (the top one always stays)
        keep = (cumulative - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def next_tokens(
    logits: torch.Tensor,
    temperatures: list[float],
    top_ps: list[float],
    generators: list[torch.Generator],
) -> list[int]:
    """One next token per row of ``logits`` ``[batch, vocab]`` with each row's own settings."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    out: list[int] = []
    for row, (t, p, g) in enumerate(zip(temperatures, top_ps, generators)):
        out.append(greedy[row] if t == 0.0 else _sample_row(logits[row], t, p, g))
    return out
