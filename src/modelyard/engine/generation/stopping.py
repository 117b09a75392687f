"""Incremental detokenization and stop conditions for one generated sequence.

Text is decoded incrementally (the prefix/read offset scheme used by vLLM and HF's
``TextStreamer``): a token's text is released once it no longer ends in an incomplete UTF-8
character. Stop strings are matched on the decoded text; any tail that could still become a
stop string is held back until it is resolved, so a streamed completion never shows part of a
stop string. Stop token sequences are matched on the generated ids; the text of their last
token is never shown (earlier tokens of a multi-token stop sequence may already have been).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["SequenceText"]

_CONTEXT_TOKENS = 6


class SequenceText:
    """Tracks the generated ids and text of one choice and decides when it must stop."""

    def __init__(
        self,
        *,
        tokenizer: Any | None,
        prompt_ids: Sequence[int],
        stop_strings: tuple[str, ...],
        stop_token_sequences: tuple[tuple[int, ...], ...],
        eos_token_ids: frozenset[int],
    ) -> None:
        self._tokenizer = tokenizer
        self._stop_strings = stop_strings
        self._stop_seqs = stop_token_sequences
        self._eos = eos_token_ids
        self.generated: list[int] = []
        # a little prompt context so tokenizers that drop a leading space decode correctly
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""  # decoded text of the generated ids so far
        self.sent = 0  # characters of ``text`` already released

    def _decode(self, ids: list[int]) -> str:
        assert self._tokenizer is not None
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def _advance_text(self, final: bool) -> None:
        if self._tokenizer is None:
            return
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)

    def _holdback(self) -> int:
        longest = 0
        for s in self._stop_strings:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def add(self, token: int, *, length_exhausted: bool) -> tuple[str, str | None]:
        """Record one generated token; returns (text to release now, finish reason or None).

        ``length_exhausted`` says this token uses the last allowed slot (``max_tokens`` or the
        context window), so the sequence ends with ``"length"`` unless a stop condition hit.
        """
        self.generated.append(token)
        if token in self._eos:
            return self._flush(), "stop"
        self._ids.append(token)
        for seq in self._stop_seqs:
            if len(self.generated) >= len(seq) and tuple(self.generated[-len(seq) :]) == seq:
                return "", "stop"
        self._advance_text(final=length_exhausted)
        if self._stop_strings:
            hits = [i for i in (self.text.find(s, self.sent) for s in self._stop_strings) if i >= 0]
            if hits:
                cut = min(hits)
                out = self.text[self.sent : cut]
                self.text = self.text[:cut]
                self.sent = cut
                return out, "stop"
        if length_exhausted:
            return self._flush(), "length"
        end = len(self.text) - self._holdback()
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return out, None

    def _flush(self) -> str:
        self._advance_text(final=True)
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out
