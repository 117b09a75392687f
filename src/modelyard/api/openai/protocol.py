"""Request and response shapes of the OpenAI-compatible API (``/v1``), as the official ``openai``
package sends and expects them. Unknown request fields that OpenAI defines but ModelYard does
not use (``presence_penalty``, ``user``, ...) are accepted and ignored; types are strict.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "StreamOptions",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "OPENAI_ERROR_TYPES",
    "error_body",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``; messages are validated by the engine's chat module so
    that errors name the exact field (``messages[1].role``)."""

    messages: list[Any]
    max_completion_tokens: int | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a prompt as text, a list of texts, or token ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False

    @property
    def token_limit(self) -> int | None:
        # OpenAI's legacy default for /completions is 16 tokens
        return 16 if self.max_tokens is None else self.max_tokens


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: one string or a list of strings."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


#: HTTP status -> OpenAI error ``type``
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI returns it."""
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
