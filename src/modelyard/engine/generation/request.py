"""The shapes of a generation request and of what comes back: events, choices, usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.errors import InvalidInput

__all__ = [
    "FINISH_REASONS",
    "GenerationRequest",
    "GenerationEvent",
    "Choice",
    "Usage",
    "GenerationResult",
]

#: ``stop``: end-of-sequence token or a stop condition; ``length``: ``max_tokens`` or the context
#: window; ``cancelled``: the caller cancelled the handle.
FINISH_REASONS = ("stop", "length", "cancelled")


def _invalid(param: str, message: str) -> InvalidInput:
    return InvalidInput(message, details={"param": param})


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """One prompt to complete, with its own sampling settings and stop conditions.

    ``temperature`` 0 is greedy decoding; otherwise tokens are sampled from the softmax at that
    temperature, restricted to the smallest set whose probability reaches ``top_p``. With a
    ``seed`` the sampled tokens are reproducible (choice ``i`` of ``n`` uses ``seed + i``).
    ``stop`` holds strings (matched on the decoded text, never included in it) and/or token id
    sequences (matched on the generated ids). ``n`` completions share the prompt. Invalid
    values raise ``InvalidInput`` whose ``details["param"]`` names the field.
    """

    prompt_ids: Sequence[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str | Sequence[int]] = ()
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if len(self.prompt_ids) == 0:
            raise _invalid("prompt", "the prompt is empty; it needs at least one token")
        if not all(isinstance(t, int) and t >= 0 for t in self.prompt_ids):
            raise _invalid("prompt", "prompt token ids must be non-negative integers")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise _invalid("max_tokens", f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 100.0:
            raise _invalid("temperature", f"temperature must be between 0 and 100, got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise _invalid("top_p", f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise _invalid("n", f"n must be a positive integer, got {self.n!r}")
        for s in self.stop:
            if isinstance(s, str):
                if not s:
                    raise _invalid("stop", "stop strings must not be empty")
            elif not s or not all(isinstance(t, int) and t >= 0 for t in s):
                raise _invalid("stop", "stop token sequences must be non-empty lists of token ids")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(s for s in self.stop if isinstance(s, str))

    @property
    def stop_token_sequences(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(s) for s in self.stop if not isinstance(s, str))


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    """New output of one choice: the token(s) generated at engine ``step`` and the text they
    completed (may be empty while a multi-byte character or a possible stop string is held
    back). The last event of a choice carries its ``finish_reason``."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    step: int


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request: the prompt once, the completions of all choices summed."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@dataclass(frozen=True, slots=True)
class GenerationResult:
    choices: list[Choice] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
