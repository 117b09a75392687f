"""Continuous-batching generation engine vs sequential ``model.generate()`` calls, in process.

A GPT-2-style model with random weights is built here (no download). For each concurrency
level C, C prompts are completed twice, greedily, ``--max-tokens`` new tokens each (end of
sequence ignored so every sequence does the same work):

- baseline: one ``model.generate()`` call after the other (what a server without batching does);
- engine:   all C submitted at once to ``GenerationEngine`` (token-level continuous batching).

It prints aggregate generated tokens/s for both and their ratio. Defaults keep a CPU run under
about two minutes; ``--size 125m --device cuda --full`` is the GPU run (GPT-2 small shape, and
C=64 too).

    python bench/llm_engine.py                       # CPU, C = 1, 16
    python bench/llm_engine.py --full                # C = 1, 16, 64
    python bench/llm_engine.py --device cuda --size 125m --full
"""

from __future__ import annotations

import argparse
import time

import torch

SIZES = {
    # name: (layers, width, heads, vocab, context)
    "small": (6, 512, 8, 16384, 512),
    "125m": (12, 768, 12, 50257, 1024),
}


def build_model(size: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, width, heads, vocab, ctx = SIZES[size]
    config = GPT2Config(
        n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, n_positions=ctx,
        eos_token_id=None, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompts(count: int, length: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    # vary lengths a little, as real traffic does
    return [
        torch.randint(1, vocab, (length - (i % 4),), generator=gen).tolist() for i in range(count)
    ]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_sequential(model: torch.nn.Module, batch: list[list[int]], max_tokens: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for p in batch:
            x = torch.tensor([p], device=device)
            out = model.generate(  # type: ignore[operator]
                x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
                min_new_tokens=max_tokens, do_sample=False,
            )
            assert out.shape[1] == len(p) + max_tokens
    sync(device)
    return time.perf_counter() - start


def run_engine(engine: object, batch: list[list[int]], max_tokens: int) -> float:
    from modelyard.engine.generation import GenerationEngine, GenerationRequest

    assert isinstance(engine, GenerationEngine)
    start = time.perf_counter()
    handles = [
        engine.submit(
            GenerationRequest(prompt_ids=p, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        )
        for p in batch
    ]
    for h in handles:
        assert h.result(timeout=600).usage.completion_tokens == max_tokens
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--full", action="store_true", help="also 64 concurrent sequences")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    args = parser.parse_args()

    from modelyard.engine.generation import GenerationEngine
    from modelyard.runtimes.hf import pick_device

    device, dtype = pick_device(args.device)
    model = build_model(args.size, device, dtype)
    levels = [1, 16, 64] if args.full else [1, 16]
    engine = GenerationEngine(
        model=model, device=device, max_batch_size=max(levels), max_queue=max(levels)
    )
    layers, width, _, vocab, _ = SIZES[args.size]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model: GPT-2 style, {layers} layers x {width}, vocab {vocab}, {params:.0f}M params, "
        f"{device} {str(dtype).removeprefix('torch.')}; torch threads {torch.get_num_threads()}"
    )
    print(f"each sequence: prompt ~{args.prompt_len} tokens, {args.max_tokens} generated (greedy)")
    # warm up both paths (allocator, kernels)
    warm = prompts(2, args.prompt_len, vocab)
    run_sequential(model, warm[:1], 4, device)
    run_engine(engine, warm, 4)

    print(f"{'concurrent':>10} {'generate() tok/s':>17} {'engine tok/s':>13} {'ratio':>7}")
    try:
        for c in levels:
            batch = prompts(c, args.prompt_len, vocab)
            tokens = c * args.max_tokens
            t_seq = run_sequential(model, batch, args.max_tokens, device)
            t_eng = run_engine(engine, batch, args.max_tokens)
            base, ours = tokens / t_seq, tokens / t_eng
            print(f"{c:>10} {base:>17.1f} {ours:>13.1f} {ours / base:>6.2f}x")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
