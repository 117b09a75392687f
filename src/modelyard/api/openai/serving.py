"""The logic behind ``/v1``: resolve the model, check the request, run it locally through the
model manager (continuous batching for generation) or forward it to an upstream engine, count
tokens, and build OpenAI-shaped responses or server-sent-event chunks.

Every check that fails raises a :mod:`modelyard.errors` class with ``details["param"]`` naming the
request field; the routes render it in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import numpy as np

from modelyard.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_body,
)
from modelyard.core.llm import LanguageModels, ServedModel
from modelyard.core.principal import Principal
from modelyard.engine.generation import GenerationHandle
from modelyard.engine.manager import LoadedModel
from modelyard.errors import InvalidInput, ModelYardError, UpstreamError, UpstreamTimeout
from modelyard.metrics import Metrics

__all__ = ["OpenAIServing", "Stream", "MAX_N", "MAX_STOP", "MAX_EMBEDDING_INPUTS"]

#: the most choices one request may ask for
MAX_N = 16
#: the most stop sequences one request may give (as OpenAI)
MAX_STOP = 4
#: the most texts one embeddings request may hold
MAX_EMBEDDING_INPUTS = 2048


@dataclass(frozen=True, slots=True)
class Stream:
    """A streaming answer: server-sent-event bytes, ending with ``data: [DONE]``."""

    chunks: AsyncIterator[bytes]


def _invalid(param: str, message: str) -> InvalidInput:
    return InvalidInput(message, details={"param": param})


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _check_sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> list[str]:
    if not 1 <= body.n <= MAX_N:
        raise _invalid("n", f"n must be between 1 and {MAX_N}, got {body.n}")
    if body.temperature is not None and not 0.0 <= body.temperature <= 2.0:
        raise _invalid("temperature", f"temperature must be between 0 and 2, got {body.temperature}")
    if body.top_p is not None and not 0.0 < body.top_p <= 1.0:
        raise _invalid("top_p", f"top_p must be in (0, 1], got {body.top_p}")
    if max_tokens is not None and max_tokens < 1:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
        raise _invalid(param, f"{param} must be at least 1, got {max_tokens}")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise _invalid("stop", f"at most {MAX_STOP} stop sequences are allowed")
    if any(not s for s in stop):
        raise _invalid("stop", "stop sequences must not be empty")
    return stop


def _rename_param(exc: InvalidInput, old: str, new: str) -> InvalidInput:
    if exc.details.get("param") == old:
        exc.details["param"] = new
    return exc


class OpenAIServing:
    """One per application; holds no per-request state."""

    def __init__(
        self,
        *,
        llm: LanguageModels,
        metrics: Metrics,
        usage: Callable[[Principal, ServedModel, int, int, float], None] | None = None,
        check_limits: Callable[[Principal], Awaitable[None]] | None = None,
        charge_tokens: Callable[[str, int], None] | None = None,
    ) -> None:
        """``usage(principal, model, prompt_tokens, completion_tokens, seconds)`` records each
        finished request (the usage meter); ``check_limits(principal)`` applies the key's rate
        and the tenant's daily quotas before any work (429); ``charge_tokens(tenant, n)`` counts
        generated tokens against the tenant's daily token quota (blocking; run in a thread)."""
        self.llm = llm
        self.manager = llm.manager
        self.metrics = metrics
        self.usage = usage
        self.check_limits = check_limits
        self.charge_tokens = charge_tokens

    # -- models ----------------------------------------------------------------------------
    @staticmethod
    def _model_card(s: ServedModel) -> dict[str, Any]:
        return {"id": s.id, "object": "model", "created": s.created_at, "owned_by": s.owned_by}

    async def list_models(self, principal: Principal) -> dict[str, Any]:
        served = await anyio.to_thread.run_sync(self.llm.list_served, principal)
        return {"object": "list", "data": [self._model_card(s) for s in served]}

    async def get_model(self, principal: Principal, model: str) -> dict[str, Any]:
        return self._model_card(await self._resolve(principal, model))

    async def _resolve(self, principal: Principal, model: str) -> ServedModel:
        return await anyio.to_thread.run_sync(self.llm.resolve, principal, model)

    # -- accounting ------------------------------------------------------------------------
    async def _admit(self, principal: Principal) -> None:
        principal.require("infer")
        if self.check_limits is not None:
            await self.check_limits(principal)

    async def _account(self, served: ServedModel, principal: Principal, prompt: int, completion: int,
                       started: float) -> None:
        elapsed = time.perf_counter() - started
        self.llm.record_tokens(served, principal, prompt=prompt, completion=completion)
        self.metrics.latency.labels(served.tenant, served.name, served.version).observe(elapsed)
        if self.usage is not None:
            self.usage(principal, served, prompt, completion, elapsed)
        if self.charge_tokens is not None and completion > 0:
            await anyio.to_thread.run_sync(self.charge_tokens, principal.tenant_id, completion)

    def _observe_timing(self, served: ServedModel, started: float,
                        spans: list[tuple[float | None, float | None, int]]) -> None:
        """The time to the first token and per output token of each (first token's time, last
        token's time, steps that gave tokens) of a request: a local engine's handles, or an
        upstream engine's streamed chunks (``perf_counter`` times)."""
        labels = (served.tenant, served.name, served.version)
        for first, last, steps in spans:
            if first is None:
                continue
            self.metrics.first_token.labels(*labels).observe(first - started)
            if last is not None and steps > 1:
                self.metrics.per_token.labels(*labels).observe((last - first) / (steps - 1))

    def _count_request(self, served: ServedModel) -> None:
        self.metrics.requests.labels(served.tenant, served.name, served.version, "openai").inc()
        if served.key:  # made before its first answer (see modelyard/statistics.py)
            self.metrics.version_statistics(served.key, served.tenant, served.name, served.version)

    def _count_error(self, served: ServedModel, exc: BaseException, started: float) -> None:
        code = exc.code if isinstance(exc, ModelYardError) else "internal"
        self.metrics.errors.labels(served.tenant, served.name, served.version, code).inc()
        if served.key:
            statistics = self.metrics.version_statistics(served.key, served.tenant, served.name, served.version)
            statistics.on_fail(1, time.perf_counter() - started)

    # -- generation ------------------------------------------------------------------------
    async def chat(self, principal: Principal, body: ChatCompletionRequest) -> dict[str, Any] | Stream:
        max_tokens = body.token_limit
        stop = _check_sampling(body, max_tokens)
        await self._admit(principal)
        served = await self._resolve(principal, body.model)
        if served.upstream is not None:
            return await self._forward(principal, served, "chat/completions", body)
        self._require_task(served, "text-generation", "/v1/chat/completions")

        def submit(runtime: Any) -> list[GenerationHandle]:
            try:
                return [runtime.submit_chat(
                    body.messages, max_tokens=max_tokens, temperature=_temp(body), top_p=body.top_p or 1.0,
                    stop=stop, seed=body.seed, n=body.n,
                )]
            except InvalidInput as exc:
                raise _rename_param(exc, "prompt", "messages") from None

        return await self._generate(principal, served, body, submit, chat=True)

    async def completions(self, principal: Principal, body: CompletionRequest) -> dict[str, Any] | Stream:
        max_tokens = body.token_limit
        stop = _check_sampling(body, max_tokens)
        prompts = _prompts(body.prompt)
        await self._admit(principal)
        served = await self._resolve(principal, body.model)
        if served.upstream is not None:
            return await self._forward(principal, served, "completions", body)
        self._require_task(served, "text-generation", "/v1/completions")

        def submit(runtime: Any) -> list[GenerationHandle]:
            handles: list[GenerationHandle] = []
            try:
                for p in prompts:
                    handles.append(runtime.submit_completion(
                        p, max_tokens=max_tokens, temperature=_temp(body), top_p=body.top_p or 1.0,
                        stop=stop, seed=body.seed, n=body.n,
                    ))
            except BaseException:
                for h in handles:
                    h.cancel()
                raise
            return handles

        return await self._generate(principal, served, body, submit, chat=False)

    @staticmethod
    def _require_task(served: ServedModel, task: str, route: str) -> None:
        if served.task != task:
            raise _invalid("model", f"model {served.name!r} is a {served.task} model; {route} needs a {task} model")

    async def _acquire(self, served: ServedModel) -> LoadedModel:
        assert served.source is not None
        model = await self.manager.acquire(served.source)
        model.in_flight += 1
        return model

    @staticmethod
    def _release(model: LoadedModel) -> None:
        model.in_flight -= 1
        model.last_used = time.monotonic()

    async def _generate(
        self,
        principal: Principal,
        served: ServedModel,
        body: ChatCompletionRequest | CompletionRequest,
        submit: Callable[[Any], list[GenerationHandle]],
        *,
        chat: bool,
    ) -> dict[str, Any] | Stream:
        started = time.perf_counter()
        self._count_request(served)
        model = await self._acquire(served)
        try:
            handles = await anyio.to_thread.run_sync(submit, model.runtime)
        except BaseException as exc:
            self._release(model)
            self._count_error(served, exc, started)
            raise
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if body.stream:
            return Stream(self._stream(principal, served, model, handles, body, rid, created, chat, started))
        try:
            results = [await h.aresult() for h in handles]
        except BaseException as exc:
            for h in handles:
                h.cancel()
            self._count_error(served, exc, started)
            raise
        finally:
            self._release(model)
        choices = []
        for i, result in enumerate(results):
            for c in result.choices:
                index = i * body.n + c.index
                if chat:
                    choices.append({"index": index, "message": {"role": "assistant", "content": c.text},
                                    "finish_reason": c.finish_reason, "logprobs": None})
                else:
                    choices.append({"index": index, "text": c.text, "finish_reason": c.finish_reason,
                                    "logprobs": None})
        prompt = sum(r.usage.prompt_tokens for r in results)
        completion = sum(r.usage.completion_tokens for r in results)
        self._observe_timing(served, started, _timed(handles))
        await self._account(served, principal, prompt, completion, started)
        return {
            "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": served.name, "choices": choices, "system_fingerprint": None,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }

    async def _stream(
        self, principal: Principal, served: ServedModel, model: LoadedModel, handles: list[GenerationHandle],
        body: ChatCompletionRequest | CompletionRequest, rid: str, created: int, chat: bool, started: float,
    ) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            data: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": served.name,
                                    "choices": choices, "system_fingerprint": None}
            if usage is not None:
                data["usage"] = usage
            return _sse(data)

        def choice(index: int, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

        finished = False
        try:
            if chat:
                yield chunk([choice(i, None, None, first=True) for i in range(len(handles) * body.n)])
            queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

            async def pump(offset: int, handle: GenerationHandle) -> None:
                try:
                    async for event in handle:
                        await queue.put((offset, event))
                    await queue.put((offset, None))
                except BaseException as exc:  # surfaced to the consumer below
                    await queue.put((offset, exc))

            tasks = [asyncio.create_task(pump(i * body.n, h)) for i, h in enumerate(handles)]
            try:
                open_handles = len(handles)
                while open_handles:
                    offset, item = await queue.get()
                    if item is None:
                        open_handles -= 1
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    if item.text or item.finish_reason is not None:
                        yield chunk([choice(offset + item.index, item.text, item.finish_reason)])
            finally:
                for t in tasks:
                    t.cancel()
            prompt = sum(h.usage.prompt_tokens for h in handles)
            completion = sum(h.usage.completion_tokens for h in handles)
            if body.include_usage:
                yield chunk([], {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion})
            self._observe_timing(served, started, _timed(handles))
            await self._account(served, principal, prompt, completion, started)
            finished = True
            yield _DONE
        except ModelYardError as exc:
            self._count_error(served, exc, started)
            yield _sse(error_body(exc.http_status, exc.public_message, exc.code, exc.details.get("param")))
        finally:
            # a client that went away (or an error) frees its batch slots at the next step
            for h in handles:
                if not h.done:
                    h.cancel()
            if not finished:
                usage = [h.usage for h in handles]
                self.llm.record_tokens(served, principal, prompt=sum(u.prompt_tokens for u in usage),
                                       completion=sum(u.completion_tokens for u in usage))
            self._release(model)

    # -- embeddings ------------------------------------------------------------------------
    async def embeddings(self, principal: Principal, body: EmbeddingRequest) -> dict[str, Any]:
        texts = _texts(body.input)
        if body.dimensions is not None and body.dimensions < 1:
            raise _invalid("dimensions", f"dimensions must be at least 1, got {body.dimensions}")
        await self._admit(principal)
        served = await self._resolve(principal, body.model)
        if served.upstream is not None:
            return await self._forward(principal, served, "embeddings", body)  # type: ignore[return-value]
        self._require_task(served, "embeddings", "/v1/embeddings")
        started = time.perf_counter()
        self._count_request(served)
        model = await self._acquire(served)
        try:
            vectors, counts = await self._embed(served, model.runtime, texts, body.dimensions)
        except BaseException as exc:
            self._count_error(served, exc, started)
            raise
        finally:
            self._release(model)
        data = []
        for i, v in enumerate(vectors):
            embedding: Any = (base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()
                              if body.encoding_format == "base64" else v.tolist())
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = int(sum(counts))
        await self._account(served, principal, tokens, 0, started)
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def _embed(
        self, served: ServedModel, runtime: Any, texts: list[str], dimensions: int | None
    ) -> tuple[np.ndarray, list[int]]:
        """Vectors and token counts. Requests small enough share batches with concurrent ones
        through the model manager's dynamic batcher; large ones are encoded on their own."""
        assert served.source is not None
        full = int(runtime.dimensions)
        if dimensions is not None and not 1 <= dimensions <= full:
            raise _invalid("dimensions", f"dimensions must be between 1 and {full}, got {dimensions}")
        if len(texts) > self.manager.defaults.max_batch_size:
            result = await anyio.to_thread.run_sync(runtime.encode, texts, dimensions)
            return np.asarray(result.vectors, dtype=np.float32), list(result.token_counts)
        out = await self.manager.predict(served.source, {"text": np.array(texts, dtype=object)}, ["embedding"])
        counts = await anyio.to_thread.run_sync(runtime.count_tokens, texts)
        vectors = np.asarray(out["embedding"], dtype=np.float32)
        if dimensions is not None and dimensions < full:
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, list(counts)

    # -- upstream engines ------------------------------------------------------------------
    async def _forward(
        self, principal: Principal, served: ServedModel, path: str,
        body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
    ) -> dict[str, Any] | Stream:
        assert served.upstream is not None
        upstream = served.upstream
        self.llm.check_upstream_host(upstream.base_url)  # the allow-list may have shrunk since
        started = time.perf_counter()
        self._count_request(served)
        payload = body.model_dump(exclude_unset=True)
        payload["model"] = upstream.upstream_model
        stream = bool(payload.get("stream"))
        wants_usage = isinstance(body, (ChatCompletionRequest, CompletionRequest)) and body.include_usage
        if stream:
            payload["stream_options"] = {"include_usage": True}
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if served.upstream_key:
            headers["Authorization"] = f"Bearer {served.upstream_key}"
        client = self.llm.http()
        url = f"{upstream.base_url}/{path}"
        try:
            request = client.build_request("POST", url, json=payload, headers=headers)
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            self._count_error(served, UpstreamTimeout(), started)
            raise UpstreamTimeout(f"the upstream engine for {served.name!r} did not answer in time") from exc
        except httpx.HTTPError as exc:
            self._count_error(served, UpstreamError(), started)
            raise UpstreamError(f"the upstream engine for {served.name!r} is unreachable") from exc
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise self._upstream_failure(served, response, started)
        if stream:
            return Stream(self._relay(principal, served, response, wants_usage, started))
        try:
            raw = await response.aread()
            data = json.loads(raw)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the upstream engine for {served.name!r} did not answer in time") from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"the upstream engine for {served.name!r} sent a broken answer") from exc
        finally:
            await response.aclose()
        if not isinstance(data, dict):
            raise UpstreamError(f"the upstream engine for {served.name!r} sent a broken answer")
        data["model"] = served.name
        usage = data.get("usage") or {}
        prompt, completion = _usage_counts(usage)
        if not usage:
            completion = sum(_word_count(_choice_text(c)) for c in data.get("choices") or [])
        await self._account(served, principal, prompt, completion, started)
        return data

    def _upstream_failure(self, served: ServedModel, response: httpx.Response, started: float) -> ModelYardError:
        message = f"the upstream engine answered {response.status_code}"
        try:
            detail = response.json().get("error", {})
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                message += f": {detail['message']}"
        except (ValueError, AttributeError):
            pass
        if response.status_code in (400, 404, 422):
            exc: ModelYardError = InvalidInput(message, details={"param": None})
        else:
            exc = UpstreamError(message)
        self._count_error(served, exc, started)
        return exc

    async def _relay(
        self, principal: Principal, served: ServedModel, response: httpx.Response, wants_usage: bool,
        started: float,
    ) -> AsyncIterator[bytes]:
        prompt = completion = 0
        counted = False
        done = False
        first_at = last_at = None  # of the chunks that carried text
        texts = 0
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if "model" in chunk:
                    chunk["model"] = served.name
                if any(_choice_text(c) for c in chunk.get("choices") or []):
                    last_at = time.perf_counter()
                    if first_at is None:
                        first_at = last_at
                    texts += 1
                if chunk.get("usage"):
                    prompt, completion = _usage_counts(chunk["usage"])
                    counted = True
                    if not chunk.get("choices") and not wants_usage:
                        continue
                elif not counted:
                    completion += sum(1 for c in chunk.get("choices") or [] if _choice_text(c))
                if not wants_usage:
                    chunk.pop("usage", None)
                yield _sse(chunk)
            self._observe_timing(served, started, [(first_at, last_at, texts)])
            await self._account(served, principal, prompt, completion, started)
            yield _DONE
        except httpx.TimeoutException:
            exc: ModelYardError = UpstreamTimeout(f"the upstream engine for {served.name!r} timed out mid-stream")
            self._count_error(served, exc, started)
            yield _sse(error_body(504, exc.message, exc.code))
        except httpx.HTTPError:
            exc = UpstreamError(f"the upstream engine for {served.name!r} broke off the stream")
            self._count_error(served, exc, started)
            yield _sse(error_body(502, exc.message, exc.code))
        finally:
            await response.aclose()
            if not done:
                self.llm.record_tokens(served, principal, prompt=prompt, completion=completion)


def _timed(handles: list[GenerationHandle]) -> list[tuple[float | None, float | None, int]]:
    """What :meth:`OpenAIServing._observe_timing` takes of a local engine's handles."""
    return [(h.first_token_at, h.last_token_at, h.token_steps) for h in handles]


def _temp(body: ChatCompletionRequest | CompletionRequest) -> float:
    return 1.0 if body.temperature is None else float(body.temperature)


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        if not prompt:
            raise _invalid("prompt", "the prompt is empty")
        return [prompt]
    if not prompt:
        raise _invalid("prompt", "the prompt is empty")
    if all(isinstance(t, int) for t in prompt):
        return [list(prompt)]
    out: list[str | list[int]] = []
    for i, p in enumerate(prompt):
        if isinstance(p, str) and not p or isinstance(p, list) and not p:
            raise _invalid(f"prompt[{i}]", "prompts must not be empty")
        out.append(p)
    if len(out) > MAX_N:
        raise _invalid("prompt", f"at most {MAX_N} prompts per request")
    return out


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not value:
        raise _invalid("input", "input must not be empty")
    if not all(isinstance(v, str) for v in value):
        raise _invalid("input", "input must be a string or a list of strings (token ids are not accepted)")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise _invalid("input", f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
    for i, v in enumerate(value):
        if not v:
            raise _invalid(f"input[{i}]", "inputs must not be empty strings")
    return list(value)


def _usage_counts(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    return (int(prompt) if isinstance(prompt, int) else 0, int(completion) if isinstance(completion, int) else 0)


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    for key in ("text", "message", "delta"):
        value = choice.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            return str(value["content"])
    return ""


def _word_count(text: str) -> int:
    return len(text.split())
