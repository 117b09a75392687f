"""Chat messages to a prompt string.

Messages are validated first (``InvalidInput`` with ``details["param"]`` naming the offending
field, e.g. ``messages[2].role``): the list must be non-empty; each message is a mapping with a
``role`` among ``system``, ``user``, ``assistant``, ``tool`` and a ``content`` that is a string
or a list of ``{"type": "text", "text": ...}`` parts (an assistant message may carry
``tool_calls`` instead of content).

When the tokenizer has a chat template (``tokenizer.chat_template``), it renders the messages
(transformers renders templates in a sandboxed Jinja environment). Otherwise the default
template :data:`DEFAULT_CHAT_TEMPLATE` is used: one block per message,

    <|system|>
    You are terse.
    <|user|>
    Hi
    <|assistant|>

i.e. ``"<|{role}|>\\n{content}\\n"`` per message followed by ``"<|assistant|>\\n"`` when a reply
is wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.errors import InvalidInput

__all__ = ["ROLES", "DEFAULT_CHAT_TEMPLATE", "validate_messages", "render_chat"]

ROLES = ("system", "user", "assistant", "tool")

#: the template used when a tokenizer has none (documented in the module docstring)
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _invalid(param: str, message: str) -> InvalidInput:
    return InvalidInput(message, details={"param": param})


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise _invalid(f"{param}[{j}]", "only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(f"{param}[{j}].text", "a text content part needs a string 'text'")
            texts.append(text)
        return "".join(texts)
    raise _invalid(param, "content must be a string or a list of text parts")


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check chat messages and normalise them to ``{"role", "content": str, ...}`` dicts."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise _invalid("messages", "messages must be a list of {role, content} objects")
    if not messages:
        raise _invalid("messages", "messages must not be empty")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _invalid(param, "each message must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"{param}.role", f"role must be one of {', '.join(ROLES)}; got {role!r}")
        content = message.get("content")
        if content is None:
            if role == "assistant" and message.get("tool_calls"):
                content = ""
            else:
                raise _invalid(f"{param}.content", "content is required")
        normalised = dict(message)
        normalised["content"] = _content_text(content, f"{param}.content")
        out.append(normalised)
    return out


def render_chat(tokenizer: Any | None, messages: Any, *, add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages``: the tokenizer's chat template, else the default one."""
    checked = validate_messages(messages)
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if tokenizer is not None and template:
        try:
            text = tokenizer.apply_chat_template(
                checked, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja2 TemplateError / raise_exception() inside templates
            raise _invalid("messages", f"the model's chat template rejected the messages: {exc}") from exc
        return str(text)
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in checked]
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)
