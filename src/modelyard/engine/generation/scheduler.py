"""Continuous batching at the token level over a transformers causal LM.

One :class:`GenerationEngine` serves one loaded text-generation model version. A background
thread runs *steps*; in each step every running sequence gets exactly one new token:

1. sequences whose handle was cancelled are dropped;
2. one batched decode forward runs for all running sequences (their last token, with the shared
   key/value cache);
3. waiting requests are admitted while batch slots are free: their prompts are prefilled in one
   left-padded batched forward, their first token sampled, and their caches merged into the
   running cache;
4. finished sequences (stop, length, cancelled) leave the batch and their cache rows are freed.

The running cache is one ``DynamicCache`` whose rows are right-aligned: row ``i`` holds its
tokens in the last ``length_i`` columns and padding (masked out) before them. Positions are
counted per row, so a sequence computes exactly what it would compute alone; with temperature 0
its tokens equal ``model.generate(do_sample=False)`` for the same prompt. Merging pads the
shorter side on the left; leaving trims columns no remaining row uses.

Bounded: at most ``max_batch_size`` sequences run, at most ``max_queue`` requests wait
(``QueueFull`` beyond). A prompt that does not fit the context window is ``InvalidInput``.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from modelyard.engine.generation.handle import GenerationHandle
from modelyard.engine.generation.request import GenerationEvent, GenerationRequest
from modelyard.engine.generation.sampling import make_generator, next_tokens
from modelyard.engine.generation.stopping import SequenceText
from modelyard.errors import InternalError, InvalidArtifact, InvalidInput, QueueFull, Unavailable

__all__ = ["GenerationEngine", "EngineStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot for metrics: sequences running, requests waiting, steps and tokens so far."""

    running_sequences: int
    waiting_requests: int
    steps: int
    generated_tokens: int
    max_batch_size: int


@dataclass(slots=True)
class _Pending:
    request: GenerationRequest
    handle: GenerationHandle


@dataclass(slots=True)
class _Sequence:
    handle: GenerationHandle
    index: int
    request: GenerationRequest
    text: SequenceText
    generator: torch.Generator
    length: int  # tokens in the cache for this row (prompt + generated, excluding last_token)
    last_token: int = -1
    finished: bool = False


class GenerationEngine:
    """Continuous-batching generation for one causal LM (see the module docstring).

    ``model`` is a transformers causal LM in eval mode on ``device``; ``tokenizer`` (optional)
    decodes text and enables stop strings. ``max_context`` defaults to the model's
    ``max_position_embeddings``/``n_positions``. The engine thread starts at construction;
    ``close()`` stops it and fails whatever is still running or waiting with ``Unavailable``.
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any | None = None,
        device: str = "cpu",
        max_batch_size: int = 16,
        max_queue: int = 256,
        max_context: int | None = None,
        eos_token_ids: frozenset[int] | None = None,
        name: str = "generation",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be positive")
        self._model = model
        self._cache_word = _cache_keyword(model)
        self._tokenizer = tokenizer
        self._device = device
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        config = model.config.get_text_config(decoder=True)
        self.vocab_size: int = int(config.vocab_size)
        ctx = max_context or getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if not ctx:
            raise InvalidArtifact("the model's context window is unknown; set max_context")
        self.max_context = int(ctx)
        self._eos = eos_token_ids if eos_token_ids is not None else self._default_eos()
        self._pad_id = min(self._eos) if self._eos else 0

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[_Pending] = deque()
        self._rows: list[_Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, columns] 1 = real token
        self._steps = 0
        self._generated = 0
        self._closed = False
        self._ids = itertools.count()
        self._check_cache_layout()
        self._thread = threading.Thread(target=self._run, name=f"modelyard-{name}", daemon=True)
        self._thread.start()

    # --- public API --------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue ``request``; it joins the running batch at the next step with free slots.

        Raises ``InvalidInput`` (``details["param"]`` names the field) when the prompt does not
        fit the context window, ``max_tokens`` overflows it, a token id is out of the
        vocabulary, stop strings are given without a tokenizer, or ``n`` exceeds the batch;
        ``QueueFull`` when ``max_queue`` requests already wait; ``Unavailable`` after ``close()``.
        """
        prompt_len = len(request.prompt_ids)
        if prompt_len >= self.max_context:
            raise InvalidInput(
                f"the prompt has {prompt_len} tokens; the model's context window is "
                f"{self.max_context} tokens including the completion",
                details={"param": "prompt"},
            )
        if prompt_len + request.max_tokens > self.max_context:
            raise InvalidInput(
                f"max_tokens ({request.max_tokens}) plus the prompt ({prompt_len} tokens) "
                f"exceeds the context window of {self.max_context} tokens; "
                f"ask for at most {self.max_context - prompt_len}",
                details={"param": "max_tokens"},
            )
        if max(request.prompt_ids) >= self.vocab_size:
            raise InvalidInput(
                f"prompt token ids must be below the vocabulary size {self.vocab_size}",
                details={"param": "prompt"},
            )
        if request.stop_strings and self._tokenizer is None:
            raise InvalidInput("stop strings need a tokenizer", details={"param": "stop"})
        if request.n > self.max_batch_size:
            raise InvalidInput(
                f"n ({request.n}) exceeds the engine's batch size {self.max_batch_size}",
                details={"param": "n"},
            )
        handle = GenerationHandle(
            request_id=f"gen-{uuid.uuid4().hex[:12]}", n=request.n, prompt_tokens=prompt_len
        )
        with self._lock:
            if self._closed:
                raise Unavailable("the model is being unloaded")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} generation requests are already waiting",
                    retry_after=1.0,
                )
            self._waiting.append(_Pending(request, handle))
            self._wakeup.notify()
        return handle

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running_sequences=len(self._rows),
                waiting_requests=len(self._waiting),
                steps=self._steps,
                generated_tokens=self._generated,
                max_batch_size=self.max_batch_size,
            )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; running and waiting requests fail with ``Unavailable``."""
        with self._lock:
            self._closed = True
            self._wakeup.notify()
        self._thread.join(timeout)

    # --- setup -------------------------------------------------------------------------------

    def _default_eos(self) -> frozenset[int]:
        ids: set[int] = set()
        gen_config = getattr(self._model, "generation_config", None)
        for source in (getattr(gen_config, "eos_token_id", None), self._model.config.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        if self._tokenizer is not None and self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        return frozenset(i for i in ids if 0 <= i < self.vocab_size)

    def _check_cache_layout(self) -> None:
        """Refuse models whose cache is not plain per-layer key/value tensors (sliding-window or
        hybrid caches cannot be re-padded and merged by this engine)."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=self._model.config)
        with torch.inference_mode():
            ids = torch.zeros((1, 1), dtype=torch.long, device=self._device)
            self._model(input_ids=ids, use_cache=True, **{self._cache_word: cache})
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            kinds = sorted({type(layer).__name__ for layer in cache.layers})
            raise InvalidArtifact(
                f"the continuous-batching engine needs a plain key/value cache; this model uses "
                f"{', '.join(kinds)}"
            )

    # --- the engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._closed and not self._rows and not self._waiting:
                        self._wakeup.wait()
                    if self._closed:
                        break
                    admitted = self._admit()
                try:
                    self._step(admitted)
                except Exception as exc:  # a failed forward must not kill the engine
                    log.exception("generation step failed")
                    error = InternalError(f"generation failed: {exc}")
                    for seq in self._rows:
                        seq.handle._fail(error)
                    for pending in admitted:
                        pending.handle._fail(error)
                    self._reset_batch()
        stop = Unavailable("the model was unloaded")
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for pending in waiting:
            pending.handle._fail(stop)
        for seq in self._rows:
            seq.handle._fail(stop)
        self._reset_batch()

    def _admit(self) -> list[_Pending]:
        """Pop waiting requests (FIFO) that fit the free slots. Caller holds the lock."""
        if any(p.handle.cancelled for p in self._waiting):
            for pending in [p for p in self._waiting if p.handle.cancelled]:
                self._waiting.remove(pending)
                for i in range(pending.request.n):
                    pending.handle._push(GenerationEvent(i, (), "", "cancelled", self._steps))
        free = self.max_batch_size - len(self._rows)
        admitted: list[_Pending] = []
        while self._waiting and self._waiting[0].request.n <= free:
            pending = self._waiting.popleft()
            admitted.append(pending)
            free -= pending.request.n
        return admitted

    def _reset_batch(self) -> None:
        self._rows = []
        self._cache = None
        self._mask = None

    def _step(self, admitted: list[_Pending]) -> None:
        step = self._steps + 1
        for seq in self._rows:
            if seq.handle.cancelled and not seq.finished:
                seq.finished = True
                seq.handle._push(GenerationEvent(seq.index, (), "", "cancelled", step))
        self._drop_finished()

        produced: list[tuple[_Sequence, int]] = []
        if self._rows:
            produced.extend(zip(self._rows, self._decode()))
        if admitted:
            new_rows, first = self._prefill(admitted)
            produced.extend(zip(new_rows, first))
        for seq, token in produced:
            self._emit(seq, token, step)
        with self._lock:
            self._steps = step
            self._generated += len(produced)
        self._drop_finished()

    def _decode(self) -> list[int]:
        assert self._mask is not None
        rows = self._rows
        ids = torch.tensor([[s.last_token] for s in rows], dtype=torch.long, device=self._device)
        positions = torch.tensor([[s.length] for s in rows], dtype=torch.long, device=self._device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        out = self._model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_word: self._cache},
        )
        for s in rows:
            s.length += 1
        return self._sample(out.logits[:, -1, :], rows)

    def _prefill(self, admitted: list[_Pending]) -> tuple[list[_Sequence], list[int]]:
        from transformers.cache_utils import DynamicCache

        new_rows: list[_Sequence] = []
        for pending in admitted:
            req = pending.request
            for i in range(req.n):
                new_rows.append(
                    _Sequence(
                        handle=pending.handle,
                        index=i,
                        request=req,
                        text=SequenceText(
                            tokenizer=self._tokenizer,
                            prompt_ids=req.prompt_ids,
                            stop_strings=req.stop_strings,
                            stop_token_sequences=req.stop_token_sequences,
                            eos_token_ids=frozenset() if req.ignore_eos else self._eos,
                        ),
                        generator=make_generator(
                            self._device, None if req.seed is None else req.seed + i
                        ),
                        length=len(req.prompt_ids),
                    )
                )
        width = max(s.length for s in new_rows)
        ids = torch.full((len(new_rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(new_rows), width), dtype=torch.long)
        for r, s in enumerate(new_rows):
            ids[r, width - s.length :] = torch.tensor(list(s.request.prompt_ids))
            mask[r, width - s.length :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._model.config)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_word: cache},
        )
        tokens = self._sample(out.logits[:, -1, :], new_rows)
        self._merge(new_rows, cache, mask)
        return new_rows, tokens

    def _sample(self, logits: torch.Tensor, rows: list[_Sequence]) -> list[int]:
        return next_tokens(
            logits[:, : self.vocab_size],
            [float(s.request.temperature) for s in rows],
            [float(s.request.top_p) for s in rows],
            [s.generator for s in rows],
        )

    def _merge(self, new_rows: list[_Sequence], cache: Any, mask: torch.Tensor) -> None:
        """Append the prefilled rows to the running batch, left-padding the narrower side."""
        if self._cache is None or self._mask is None:
            self._rows, self._cache, self._mask = list(new_rows), cache, mask
            return
        old_w, new_w = self._mask.shape[1], mask.shape[1]
        width = max(old_w, new_w)

        def pad(t: torch.Tensor, by: int, dim: int) -> torch.Tensor:
            if by == 0:
                return t
            shape = list(t.shape)
            shape[dim] = by
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat([pad(old.keys, width - old_w, 2), pad(new.keys, width - new_w, 2)])
            old.values = torch.cat(
                [pad(old.values, width - old_w, 2), pad(new.values, width - new_w, 2)]
            )
        self._mask = torch.cat([pad(self._mask, width - old_w, 1), pad(mask, width - new_w, 1)])
        self._rows.extend(new_rows)

    def _emit(self, seq: _Sequence, token: int, step: int) -> None:
        req = seq.request
        count = len(seq.text.generated) + 1
        exhausted = count >= req.max_tokens or seq.length + 1 >= self.max_context
        text, finish = seq.text.add(token, length_exhausted=exhausted)
        seq.last_token = token
        if finish is not None:
            seq.finished = True
        seq.handle._push(GenerationEvent(seq.index, (token,), text, finish, step))

    def _drop_finished(self) -> None:
        """Remove finished rows from the batch and trim cache columns nobody uses any more."""
        if not self._rows or not any(s.finished for s in self._rows):
            return
        keep = [i for i, s in enumerate(self._rows) if not s.finished]
        if not keep:
            self._reset_batch()
            return
        assert self._mask is not None
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        self._rows = [self._rows[i] for i in keep]
        used = max(s.length for s in self._rows)
        trim = mask.shape[1] - used
        self._mask = mask[:, trim:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:, :]
            layer.values = layer.values.index_select(0, index)[:, :, trim:, :]


def _cache_keyword(model: Any) -> str:
    """The name ``model``'s forward takes its key/value cache by: ``cache`` since transformers
    5.x renamed it (``past_key_values`` is deprecated there, and goes in 5.40), else
    ``past_key_values``."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature to read: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"
