"""The response cache (``core/response_cache.py``) in process: what makes two requests the same,
the byte bound and its order, read-only copies, a version's answers dropped, and the counts."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.core.response_cache import ResponseCache
from modelyard.metrics import Metrics
from tests.support.versions import VersionStub


V1, V2 = VersionStub(tenant_name="t"), VersionStub(key="v-2", tenant_name="t", version=2)
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _cache(max_bytes: int = 1 << 20) -> tuple[ResponseCache, Metrics]:
    metrics = Metrics()
    return ResponseCache(max_bytes, metrics), metrics


def test_the_same_request_finds_its_answer_and_no_other_does() -> None:
    cache, metrics = _cache()
    key, found = cache.lookup(V1, {"x": X}, None)
    assert found is None
    answer = np.array([[1.0], [2.0]], np.float32)
    cache.remember(V1, key, {"y": answer[:, :]})
    answer[0, 0] = 99  # the cache kept a copy
    _, found = cache.lookup(V1, {"x": X.copy()}, None)
    assert found is not None and found["y"].tolist() == [[1.0], [2.0]] and not found["y"].flags.writeable
    others = [
        (V2, {"x": X}, None),  # another version
        (V1, {"x": X + 1}, None),  # other bytes
        (V1, {"x": X.reshape(4, 2)}, None),  # same bytes, other shape
        (V1, {"x": X.astype(np.float64)}, None),  # other dtype
        (V1, {"z": X}, None),  # other name
        (V1, {"x": X}, ["y"]),  # outputs named
    ]
    for info, arrays, outputs in others:
        assert cache.lookup(info, arrays, outputs)[1] is None, (info, arrays, outputs)
    statistics = metrics.statistics.get("v-1")
    assert statistics is not None and (statistics.cache_hits, statistics.cache_misses) == (1, 6)
    assert metrics.cache_lookups.labels("t", "m", "1", "hit").value == 1


def test_big_inputs_and_strings_and_several_inputs() -> None:
    cache, _ = _cache()
    big = np.random.default_rng(0).random((64, 256)).astype(np.float32)  # 64 KiB: keyed by digest
    words = np.array([b"a", b"bc"], dtype=object)
    arrays = {"b": big, "w": words, "a": X}
    key, _ = cache.lookup(V1, arrays, None)
    cache.remember(V1, key, {"y": np.ones(3)})
    assert cache.lookup(V1, {"a": X, "w": words.copy(), "b": big.copy()}, None)[1] is not None  # any order
    changed = big.copy()
    changed[63, 255] += 1
    assert cache.lookup(V1, {"a": X, "w": words, "b": changed}, None)[1] is None
    assert cache.lookup(V1, {"a": X, "w": np.array([b"ab", b"c"], dtype=object), "b": big}, None)[1] is None


def test_bounded_in_bytes_least_recently_used_first_out() -> None:
    one, _ = _cache()
    key, _ = one.lookup(V1, {"x": np.full(4, 0, np.float32)}, None)
    one.remember(V1, key, {"y": np.zeros(16, np.float32)})
    cache, metrics = _cache(max_bytes=3 * one.bytes + one.bytes // 2)  # room for three such answers
    keys = []
    for i in range(3):
        key, _ = cache.lookup(V1, {"x": np.full(4, i, np.float32)}, None)
        cache.remember(V1, key, {"y": np.zeros(16, np.float32)})
        keys.append(key)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert cache.lookup(V1, {"x": np.full(4, 0, np.float32)}, None)[1] is not None  # 0 is now the newest
    key, _ = cache.lookup(V1, {"x": np.full(4, 3, np.float32)}, None)
    cache.remember(V1, key, {"y": np.zeros(16, np.float32)})
    assert len(cache) == 3
    assert cache.lookup(V1, {"x": np.full(4, 1, np.float32)}, None)[1] is None  # the least recently used went
    assert cache.lookup(V1, {"x": np.full(4, 0, np.float32)}, None)[1] is not None
    key, _ = cache.lookup(V1, {"x": np.full(4, 9, np.float32)}, None)
    cache.remember(V1, key, {"y": np.zeros(10_000, np.float32)})  # bigger than the whole cache: not kept
    assert len(cache) == 3
    sample = {s.name: s.value for m in metrics.registry.collect() for s in m.samples}
    assert sample["modelyard_response_cache_entries"] == 3
    assert sample["modelyard_response_cache_bytes"] == cache.bytes


def test_a_removed_versions_answers_go() -> None:
    cache, _ = _cache()
    for info in (V1, V2):
        key, _ = cache.lookup(info, {"x": X}, None)
        cache.remember(info, key, {"y": X})
    cache.forget("v-1")
    assert len(cache) == 1 and cache.lookup(V2, {"x": X}, None)[1] is not None
    assert cache.lookup(V1, {"x": X}, None)[1] is None


@pytest.mark.parametrize("max_bytes", [0, 1 << 20])
def test_enabled_by_its_bound(max_bytes: int) -> None:
    assert _cache(max_bytes)[0].enabled is (max_bytes > 0)


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ({"input": (1, 64)}, {"label": (1,), "probabilities": (1, 10)}),  # the digits model's answers
        ({"a": (1, 4), "b": (1, 4), "c": (1, 4)}, {"y": (1, 2)}),  # small inputs, several
        ({"x": (1, 1024)}, {"y": (1, 1024)}),  # 4 KiB each way
        ({"x": (1, 16384)}, {"y": (1, 16384)}),  # 64 KiB: the input keyed by its digest
    ],
)
def test_what_the_bound_counts_is_what_an_answer_holds(
    inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]
) -> None:
    """The bytes counted against ``max_bytes`` are within a tenth of the memory the entries
    take (traced), small answers included: the bound is the memory's."""
    import gc
    import tracemalloc

    cache, _ = _cache(max_bytes=1 << 30)
    rng = np.random.default_rng(0)

    def answer(i: int) -> None:
        key, _ = cache.lookup(V1, {n: np.full(shape, i, np.float32) for n, shape in inputs.items()}, None)
        cache.remember(V1, key, {n: rng.random(shape).astype(np.float32) for n, shape in outputs.items()})

    for i in range(50):  # the dict and the metrics' children made
        answer(i)
    gc.collect()
    tracemalloc.start()
    try:
        before, counted = tracemalloc.take_snapshot(), cache.bytes
        for i in range(50, 550):
            answer(i)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert 0.9 <= held / (cache.bytes - counted) <= 1.1, (held, cache.bytes - counted)
