"""GenerationEngine on a tiny GPT-2: continuous batching, equivalence with generate(), sampling,
stop conditions, cancellation, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from modelyard.engine.generation import (
    GenerationEngine,
    GenerationEvent,
    GenerationHandle,
    GenerationRequest,
)
from modelyard.errors import InvalidInput, QueueFull, Unavailable
from modelyard.runtimes.hf import load_model, load_tokenizer

PROMPTS = [
    "hello world",
    "the quick brown fox jumps over the lazy",
    "a",
    "tokens arrive one at a time while the engine keeps working and many sequences share",
]


@pytest.fixture(scope="module")
def lm(tiny_gpt2) -> tuple[Any, Any]:
    model = load_model(tiny_gpt2, "text-generation", device="cpu", dtype=torch.float32)
    return model, load_tokenizer(tiny_gpt2)


@pytest.fixture()
def make_engine(lm) -> Iterator[Any]:
    engines: list[GenerationEngine] = []

    def make(**kwargs: Any) -> GenerationEngine:
        model, tok = lm
        engine = GenerationEngine(model=model, tokenizer=tok, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def ids(lm, text: str) -> list[int]:
    return lm[1](text)["input_ids"]


def reference(lm, prompt_ids: list[int], max_new: int) -> list[int]:
    model, tok = lm
    x = torch.tensor([prompt_ids])
    out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
        pad_token_id=tok.eos_token_id,
    )
    generated = out[0, x.shape[1]:].tolist()
    if tok.eos_token_id in generated:  # generate() stops at eos too (and then pads)
        generated = generated[: generated.index(tok.eos_token_id) + 1]
    return generated


def greedy(prompt_ids: list[int], max_tokens: int, **kw: Any) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt_ids, max_tokens=max_tokens, temperature=0.0, **kw)


def wait_for_tokens(handle: GenerationHandle, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while handle.usage.completion_tokens < count:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)


def test_greedy_tokens_equal_generate_while_batched_with_others(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=8)
    prompts = [ids(lm, p) for p in PROMPTS]
    first = [engine.submit(greedy(p, 24)) for p in prompts[:2]]
    wait_for_tokens(first[0], 5)  # the others join a running batch, with different lengths
    later = [engine.submit(greedy(p, 16 + i)) for i, p in enumerate(prompts[2:])]
    for prompt, handle, max_new in zip(prompts, first + later, [24, 24, 16, 17]):
        result = handle.result(timeout=60)
        choice = result.choices[0]
        assert list(choice.token_ids) == reference(lm, prompt, max_new)
        assert choice.text == lm[1].decode(list(choice.token_ids), skip_special_tokens=True)
        assert result.usage.prompt_tokens == len(prompt)
        assert result.usage.completion_tokens == len(choice.token_ids)


def _steps(handle: GenerationHandle) -> list[int]:
    return [e.step for e in handle]


def test_concurrent_requests_progress_together(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=4)
    a = engine.submit(greedy(ids(lm, PROMPTS[0]), 30, ignore_eos=True))
    b = engine.submit(greedy(ids(lm, PROMPTS[1]), 30, ignore_eos=True))
    steps_a, steps_b = _steps(a), _steps(b)
    assert len(steps_a) == len(steps_b) == 30
    # each got one token per step, and both had tokens before either finished
    assert steps_a == list(range(steps_a[0], steps_a[0] + 30))
    assert steps_b[0] < steps_a[-1] and steps_a[0] < steps_b[-1]
    # a late request joins the running batch instead of waiting for it to drain
    long = engine.submit(greedy(ids(lm, PROMPTS[2]), 60, ignore_eos=True))
    wait_for_tokens(long, 3)
    late = engine.submit(greedy(ids(lm, PROMPTS[3]), 5, ignore_eos=True))
    steps_late, steps_long = _steps(late), _steps(long)
    assert steps_long[0] < steps_late[0] and steps_late[-1] < steps_long[-1]
    assert engine.stats().generated_tokens == 30 + 30 + 60 + 5


def test_batch_size_limits_running_sequences(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=2)
    handles = [engine.submit(greedy(ids(lm, p), 10, ignore_eos=True)) for p in PROMPTS[:3]]
    steps = [_steps(h) for h in handles]
    # the third waited for a free slot
    assert steps[2][0] > min(steps[0][-1], steps[1][-1])


def test_cancel_frees_the_slot(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=1)
    a = engine.submit(greedy(ids(lm, PROMPTS[0]), 100, ignore_eos=True))
    b = engine.submit(greedy(ids(lm, PROMPTS[1]), 5, ignore_eos=True))
    wait_for_tokens(a, 2)
    assert engine.stats().waiting_requests == 1
    a.cancel()
    result_b = b.result(timeout=30)
    result_a = a.result(timeout=30)
    assert result_a.choices[0].finish_reason == "cancelled"
    assert result_a.usage.completion_tokens < 100
    assert result_b.choices[0].finish_reason == "length"
    assert engine.stats().running_sequences == 0


def test_cancel_while_waiting(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=1)
    a = engine.submit(greedy(ids(lm, PROMPTS[0]), 20, ignore_eos=True))
    b = engine.submit(greedy(ids(lm, PROMPTS[1]), 20, ignore_eos=True))
    b.cancel()
    assert b.result(timeout=30).choices[0].finish_reason == "cancelled"
    assert b.usage.completion_tokens == 0
    assert a.result(timeout=30).choices[0].finish_reason == "length"


def test_max_tokens_gives_length(lm, make_engine) -> None:
    engine = make_engine()
    result = engine.submit(greedy(ids(lm, PROMPTS[0]), 7, ignore_eos=True)).result(timeout=30)
    assert result.choices[0].finish_reason == "length"
    assert len(result.choices[0].token_ids) == 7 and result.usage.completion_tokens == 7


def test_a_handle_times_its_first_token_and_counts_the_steps_that_gave_tokens(lm, make_engine) -> None:
    """What the time to the first token and per output token are made of: one step per token
    of a choice, however many choices share the step."""
    engine = make_engine()
    submitted = time.perf_counter()
    handle = engine.submit(GenerationRequest(prompt_ids=ids(lm, PROMPTS[0]), max_tokens=5, ignore_eos=True, n=2,
                                             temperature=1.0, seed=3))
    result = handle.result(timeout=30)
    assert [len(c.token_ids) for c in result.choices] == [5, 5]
    assert handle.token_steps == 5  # two tokens a step
    assert handle.first_token_at is not None and handle.last_token_at is not None
    assert submitted < handle.first_token_at < handle.last_token_at <= time.perf_counter()
    waiting = GenerationHandle(request_id="r", n=1, prompt_tokens=1)
    waiting._push(GenerationEvent(0, (), "", "cancelled", 0))  # no token: nothing timed
    assert (waiting.first_token_at, waiting.token_steps) == (None, 0)


def test_stop_strings_and_stop_tokens(lm, make_engine) -> None:
    engine = make_engine()
    prompt = ids(lm, PROMPTS[1])
    full = engine.submit(greedy(prompt, 40, ignore_eos=True)).result(timeout=30).choices[0]
    text = full.text
    start = next(i for i in range(3, len(text) - 3) if "\ufffd" not in text[i : i + 3])
    stop = text[start : start + 3]
    cut = text.index(stop)
    stopped = engine.submit(greedy(prompt, 40, ignore_eos=True, stop=[stop, "never-seen"]))
    events = list(stopped)
    choice = stopped.result().choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == text[:cut] == "".join(e.text for e in events)
    assert stop not in choice.text
    # a stop token sequence ends the completion at that token
    seq = tuple(full.token_ids[4:6])
    by_tokens = engine.submit(greedy(prompt, 40, ignore_eos=True, stop=[seq])).result(timeout=30)
    got = by_tokens.choices[0].token_ids
    assert by_tokens.choices[0].finish_reason == "stop"
    assert got[-2:] == seq and len(got) <= 6


def test_seeded_sampling_is_reproducible_in_any_batch(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=8)
    prompt = ids(lm, PROMPTS[0])

    def sample(seed: int, **kw: Any) -> GenerationRequest:
        return GenerationRequest(
            prompt_ids=prompt, max_tokens=20, temperature=1.0, top_p=0.9, seed=seed,
            ignore_eos=True, **kw,
        )

    alone = engine.submit(sample(7)).result(timeout=30).choices[0].token_ids
    others = [engine.submit(greedy(ids(lm, p), 20)) for p in PROMPTS[1:]]
    batched = engine.submit(sample(7)).result(timeout=30).choices[0].token_ids
    for h in others:
        h.result(timeout=30)
    assert alone == batched
    assert engine.submit(sample(8)).result(timeout=30).choices[0].token_ids != alone
    two = engine.submit(sample(7, n=2)).result(timeout=30)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].token_ids == alone and two.choices[1].token_ids != alone
    assert two.usage.prompt_tokens == len(prompt) and two.usage.completion_tokens == 40


def test_tiny_top_p_is_greedy(lm, make_engine) -> None:
    engine = make_engine()
    prompt = ids(lm, PROMPTS[2])
    req = GenerationRequest(prompt_ids=prompt, max_tokens=10, temperature=1.5, top_p=1e-6)
    assert list(engine.submit(req).result(timeout=30).choices[0].token_ids) == reference(lm, prompt, 10)


def test_context_window_and_invalid_requests(lm, make_engine) -> None:
    engine = make_engine()
    assert engine.max_context == 128
    with pytest.raises(InvalidInput) as err:
        engine.submit(greedy([5] * 128, 1))
    assert err.value.details == {"param": "prompt"}
    with pytest.raises(InvalidInput) as err:
        engine.submit(greedy([5] * 120, 9))
    assert err.value.details == {"param": "max_tokens"}
    with pytest.raises(InvalidInput) as err:
        engine.submit(greedy([10**6], 1))
    assert err.value.details == {"param": "prompt"}
    with pytest.raises(InvalidInput) as err:
        engine.submit(greedy([1], 1, n=1000))
    assert err.value.details == {"param": "n"}
    for kwargs, param in [
        ({"prompt_ids": [], "max_tokens": 1}, "prompt"),
        ({"prompt_ids": [1], "max_tokens": 0}, "max_tokens"),
        ({"prompt_ids": [1], "max_tokens": 1, "temperature": -1}, "temperature"),
        ({"prompt_ids": [1], "max_tokens": 1, "top_p": 0}, "top_p"),
        ({"prompt_ids": [1], "max_tokens": 1, "stop": [""]}, "stop"),
    ]:
        with pytest.raises(InvalidInput) as err:
            GenerationRequest(**kwargs)
        assert err.value.details == {"param": param}
    # the last context slot ends a completion with "length"
    result = engine.submit(greedy([5] * 120, 8, ignore_eos=True)).result(timeout=30)
    assert result.choices[0].finish_reason == "length" and result.usage.total_tokens == 128


def test_queue_is_bounded(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=1, max_queue=1)
    running = engine.submit(greedy(ids(lm, PROMPTS[0]), 60, ignore_eos=True))
    wait_for_tokens(running, 1)
    waiting = engine.submit(greedy(ids(lm, PROMPTS[1]), 5))
    with pytest.raises(QueueFull) as err:
        engine.submit(greedy(ids(lm, PROMPTS[2]), 5))
    assert err.value.retry_after == 1.0
    running.cancel()
    waiting.result(timeout=30)


def test_close_fails_running_and_waiting(lm, make_engine) -> None:
    engine = make_engine(max_batch_size=1)
    running = engine.submit(greedy(ids(lm, PROMPTS[0]), 100, ignore_eos=True))
    waiting = engine.submit(greedy(ids(lm, PROMPTS[1]), 5))
    wait_for_tokens(running, 1)
    engine.close()
    for handle in (running, waiting):
        with pytest.raises(Unavailable):
            handle.result(timeout=10)
    with pytest.raises(Unavailable):
        engine.submit(greedy(ids(lm, PROMPTS[1]), 5))


async def test_async_iteration_from_an_event_loop(lm, make_engine) -> None:
    engine = make_engine()
    handles = [engine.submit(greedy(ids(lm, p), 12, ignore_eos=True)) for p in PROMPTS[:3]]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def consume(h: GenerationHandle) -> list[GenerationEvent]:
        return [e async for e in h]

    tick_task = asyncio.create_task(ticker())
    streams = await asyncio.gather(*(consume(h) for h in handles))
    tick_task.cancel()
    assert ticks > 1  # the loop kept running while tokens were produced
    for h, events in zip(handles, streams):
        assert len(events) == 12 and events[-1].finish_reason == "length"
        result = await h.aresult()
        assert "".join(e.text for e in events) == result.choices[0].text


def test_the_cache_goes_by_the_keyword_the_models_forward_takes() -> None:
    """``cache`` where the forward takes it (transformers 5.x, where ``past_key_values`` is
    deprecated), else ``past_key_values``, also for a forward whose signature cannot be read."""
    from modelyard.engine.generation.scheduler import _cache_keyword

    class Renamed:
        def forward(self, input_ids: Any = None, cache: Any = None, use_cache: bool = True) -> None: ...

    class Older:
        def forward(self, input_ids: Any = None, past_key_values: Any = None, use_cache: bool = True) -> None: ...

    class Unreadable:
        forward = min  # a builtin without a signature: inspect.signature raises ValueError

    assert _cache_keyword(Renamed()) == "cache"
    assert _cache_keyword(Older()) == "past_key_values"
    assert _cache_keyword(Unreadable()) == "past_key_values"
