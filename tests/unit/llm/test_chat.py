"""Chat rendering: validation errors name the parameter; tokenizer templates and the default."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.engine.generation import render_chat, validate_messages
from modelyard.errors import InvalidInput


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ("hello", "messages"),
        ([{"role": "user", "content": "hi"}, "x"], "messages[1]"),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0]"),
    ],
)
def test_invalid_messages_name_the_parameter(messages: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_messages(messages)
    assert err.value.details == {"param": param}


def test_default_template() -> None:
    messages = [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42"},
    ]
    assert render_chat(None, messages) == (
        "<|system|>\nbe terse\n<|user|>\nhi there\n<|assistant|>\n\n<|tool|>\n42\n<|assistant|>\n"
    )
    assert render_chat(None, messages[:1], add_generation_prompt=False) == "<|system|>\nbe terse\n"


class _TemplatedTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages: list[dict[str, Any]], **kw: Any) -> str:
        if messages[0]["role"] != "user":
            raise ValueError("conversation must start with user")
        return "|".join(m["content"] for m in messages) + ("<gen>" if kw["add_generation_prompt"] else "")


def test_tokenizer_template_is_used_and_its_errors_are_invalid_input() -> None:
    tok = _TemplatedTokenizer()
    assert render_chat(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a|b<gen>"
    with pytest.raises(InvalidInput, match="chat template rejected") as err:
        render_chat(tok, [{"role": "system", "content": "a"}])
    assert err.value.details == {"param": "messages"}


def test_real_jinja_chat_template(tmp_path, gpt2_builder) -> None:
    from modelyard.runtimes.hf import inspect_model_folder, load_tokenizer

    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    folder = gpt2_builder(tmp_path / "m", chat_template=template)
    assert inspect_model_folder(folder).has_chat_template
    tok = load_tokenizer(folder)
    assert render_chat(tok, [{"role": "user", "content": "hi"}]) == "[user]hi[assistant]"
