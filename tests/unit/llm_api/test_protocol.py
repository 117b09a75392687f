"""The /v1 request checks and error shape, without a server."""

from __future__ import annotations

import pytest

from modelyard.api.openai.protocol import ChatCompletionRequest, CompletionRequest, error_body
from modelyard.api.openai.serving import MAX_N, _check_sampling, _prompts, _texts
from modelyard.errors import InvalidInput


def _param(fn) -> str:  # noqa: ANN001
    with pytest.raises(InvalidInput) as info:
        fn()
    return str(info.value.details["param"])


def test_error_body_has_openai_shape() -> None:
    assert error_body(400, "bad", "invalid_input", "n") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": "invalid_input"}
    }
    assert error_body(401, "who", "unauthenticated")["error"]["type"] == "authentication_error"
    assert error_body(429, "slow", "queue_full")["error"]["type"] == "rate_limit_error"
    assert error_body(502, "up", "upstream_error")["error"]["type"] == "server_error"


def _chat(**kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [], **kw})


def test_sampling_limits_name_the_parameter() -> None:
    assert _param(lambda: _check_sampling(_chat(n=MAX_N + 1), None)) == "n"
    assert _param(lambda: _check_sampling(_chat(n=0), None)) == "n"
    assert _param(lambda: _check_sampling(_chat(temperature=2.5), None)) == "temperature"
    assert _param(lambda: _check_sampling(_chat(temperature=-0.1), None)) == "temperature"
    assert _param(lambda: _check_sampling(_chat(top_p=0), None)) == "top_p"
    assert _param(lambda: _check_sampling(_chat(max_tokens=0), 0)) == "max_tokens"
    assert _param(lambda: _check_sampling(_chat(max_completion_tokens=0), 0)) == "max_completion_tokens"
    assert _param(lambda: _check_sampling(_chat(stop=["a", "b", "c", "d", "e"]), None)) == "stop"
    assert _check_sampling(_chat(stop="\n", temperature=0, n=2), 5) == ["\n"]


def test_completion_defaults_and_prompts() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert body.token_limit == 16  # OpenAI's legacy default
    chat = _chat(max_tokens=5, max_completion_tokens=7)
    assert chat.token_limit == 7
    assert _prompts("hi") == ["hi"]
    assert _prompts([1, 2, 3]) == [[1, 2, 3]]
    assert _prompts(["a", "b"]) == ["a", "b"]
    assert _param(lambda: _prompts("")) == "prompt"
    assert _param(lambda: _prompts([])) == "prompt"
    assert _param(lambda: _prompts(["a", ""])) == "prompt[1]"


def test_embedding_inputs() -> None:
    assert _texts("x") == ["x"]
    assert _texts(["x", "y"]) == ["x", "y"]
    assert _param(lambda: _texts([])) == "input"
    assert _param(lambda: _texts([1, 2])) == "input"
    assert _param(lambda: _texts(["ok", ""])) == "input[1]"
