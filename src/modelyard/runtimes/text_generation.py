"""Runtime for format ``hf-text-generation``: a causal LM served by a continuous-batching engine.

The OpenAI routes call :meth:`TextGenerationRuntime.submit_completion` /
:meth:`~TextGenerationRuntime.submit_chat` and stream the returned handle's events;
:meth:`~TextGenerationRuntime.predict` serves the same model over OIP v2 (BYTES input
``text``, BYTES output ``text_output``; optional ``max_tokens`` INT and ``temperature`` FP
inputs of shape ``[1]``).

Metadata keys read at load: ``task`` must be text-generation if given; ``max_batch_size``
(16), ``max_queue`` (256), ``max_tokens`` (default for ``predict``, 64).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.engine.generation import (
    GenerationEngine,
    GenerationHandle,
    GenerationRequest,
    render_chat,
)
from modelyard.errors import InvalidInput
from modelyard.runtimes.base import RuntimeOptions
from modelyard.runtimes.hf import (
    HFModelInfo,
    inspect_for_task,
    load_model,
    load_tokenizer,
    model_root,
    pick_device,
    text_array,
)
from modelyard.tensors import TensorSpec

__all__ = ["TextGenerationRuntime", "load"]


def _scalar(inputs: dict[str, np.ndarray], name: str, default: Any) -> Any:
    if name not in inputs:
        return default
    value = np.asarray(inputs[name]).ravel()
    if value.size != 1:
        raise InvalidInput(f"{name!r} must hold one value", details={"param": name})
    return value[0].item()


class TextGenerationRuntime:
    """A loaded causal LM, its tokenizer and its :class:`GenerationEngine`."""

    inputs = [
        TensorSpec("text", "BYTES", (-1,)),
        TensorSpec("max_tokens", "INT32", (1,)),
        TensorSpec("temperature", "FP32", (1,)),
    ]
    outputs = [TensorSpec("text_output", "BYTES", (-1,))]
    #: ``predict`` waits on the generation engine's thread (see ``runtimes.base.computes_in_caller``)
    waits_elsewhere = True

    def __init__(
        self,
        *,
        path: Path,
        info: HFModelInfo,
        options: RuntimeOptions,
        max_batch_size: int = 16,
        max_queue: int = 256,
        default_max_tokens: int = 64,
    ) -> None:
        self.info = info
        self.device, dtype = pick_device(options.device)
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, "text-generation", device=self.device, dtype=dtype)
        self.default_max_tokens = default_max_tokens
        self.engine = GenerationEngine(
            model=self.model,
            tokenizer=self.tokenizer,
            device=self.device,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_context=info.max_context,
            name=f"generation-{path.name}",
        )
        self.max_context = self.engine.max_context
        self._weights_bytes = sum(
            p.numel() * p.element_size() for p in self.model.parameters()
        )

    # --- tokens and prompts ------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        return ids

    def render_chat(self, messages: Any) -> str:
        """The prompt for chat ``messages`` (validated; see ``engine.generation.chat``)."""
        return render_chat(self.tokenizer, messages, add_generation_prompt=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # --- generation --------------------------------------------------------------------------

    def submit_completion(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str | Sequence[int]] | str | None = None,
        seed: int | None = None,
        n: int = 1,
    ) -> GenerationHandle:
        """Start completing ``prompt`` (text, or token ids). ``max_tokens=None`` means the rest
        of the context window. Returns the handle to stream or wait on."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidInput("the prompt is empty", details={"param": "prompt"})
            ids = self.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        return self._submit(ids, max_tokens, temperature, top_p, stop, seed, n)

    def submit_chat(
        self,
        messages: Any,
        *,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str | Sequence[int]] | str | None = None,
        seed: int | None = None,
        n: int = 1,
    ) -> GenerationHandle:
        """Start the assistant's reply to ``messages`` (rendered with the chat template)."""
        text = self.render_chat(messages)
        ids = self.encode(text, add_special_tokens=False)
        return self._submit(ids, max_tokens, temperature, top_p, stop, seed, n)

    def _submit(
        self,
        ids: list[int],
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        stop: Sequence[str | Sequence[int]] | str | None,
        seed: int | None,
        n: int,
    ) -> GenerationHandle:
        if isinstance(stop, str):
            stop = [stop]
        if max_tokens is None:
            max_tokens = max(1, self.max_context - len(ids))
        request = GenerationRequest(
            prompt_ids=ids,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(stop or ()),
            seed=seed,
            n=n,
        )
        return self.engine.submit(request)

    # --- Runtime protocol --------------------------------------------------------------------

    def predict(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Complete each string of ``text``; all of them run in the same batch."""
        texts = text_array(inputs)
        max_tokens = int(_scalar(inputs, "max_tokens", self.default_max_tokens))
        temperature = float(_scalar(inputs, "temperature", 0.0))
        handles = []
        try:
            for t in texts:
                ids = self.encode(t)
                handles.append(
                    self._submit(
                        ids, min(max_tokens, max(1, self.max_context - len(ids))),
                        temperature, 1.0, None, None, 1,
                    )
                )
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        out = np.array([h.result().choices[0].text.encode("utf-8") for h in handles], dtype=object)
        return {"text_output": out}

    def memory_bytes(self) -> int:
        """Weights plus a key/value cache for a full batch of 512-token sequences."""
        config: Any = self.model.config.get_text_config(decoder=True)
        layers: int = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 1)
        hidden: int = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 1)
        element = next(self.model.parameters()).element_size()
        kv = 2 * layers * hidden * element * self.engine.max_batch_size * min(512, self.max_context)
        return int(self._weights_bytes + kv)

    def close(self) -> None:
        self.engine.close()
        del self.model


def load(path: Path, options: RuntimeOptions, metadata: dict[str, Any]) -> TextGenerationRuntime:
    root = model_root(Path(path))
    info = inspect_for_task(root, "text-generation", metadata)
    return TextGenerationRuntime(
        path=root,
        info=info,
        options=options,
        max_batch_size=int(metadata.get("max_batch_size", 16)),
        max_queue=int(metadata.get("max_queue", 256)),
        default_max_tokens=int(metadata.get("max_tokens", 64)),
    )
