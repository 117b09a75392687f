"""Hugging Face model folders: inspection, safety checks and loading.

A model version of format ``hf-text-generation``, ``hf-embeddings`` or ``hf-text-classification``
is a local folder in the Hugging Face layout (``config.json``, safetensors weights, tokenizer
files). :func:`inspect_model_folder` reads only JSON and safetensors headers — it imports neither
torch nor transformers — and refuses anything that could run code when loaded:

- pickle-based weights or files (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.pickle``, ``.ckpt``,
  ``.joblib``): ``UnsafeContent("only safetensors weights are accepted ...")``;
- any JSON config with ``auto_map`` or ``trust_remote_code`` (custom Python code): ``UnsafeContent``;
- symbolic links (a folder given directly, not through an archive): ``UnsafeContent``.

The loaders below always pass ``local_files_only=True``, ``trust_remote_code=False`` and
``use_safetensors=True``, so transformers never downloads, never runs repository code and never
unpickles.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import InvalidArtifact, InvalidInput, UnsafeContent

if TYPE_CHECKING:
    import torch

__all__ = [
    "TASKS",
    "FORMAT_FOR_TASK",
    "HFModelInfo",
    "inspect_model_folder",
    "inspect_for_task",
    "model_root",
    "pick_device",
    "load_tokenizer",
    "load_model",
    "text_array",
]

#: the tasks a Hugging Face folder can be served for
TASKS = ("text-generation", "embeddings", "text-classification")

#: task -> artifact format name registered in ``RUNTIME_MODULES``
FORMAT_FOR_TASK = {
    "text-generation": "hf-text-generation",
    "embeddings": "hf-embeddings",
    "text-classification": "hf-text-classification",
}

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len")
_ENCODER_SUFFIXES = ("Model", "ForMaskedLM", "ForPreTraining")
_SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HFModelInfo:
    """What a Hugging Face folder holds, read without loading the weights.

    ``max_context`` is the longest token sequence the model accepts (``None`` if unknown);
    ``labels`` are the class names of a classifier in id order; ``hidden_size`` is the width
    of an embedding model's vectors (before any truncation requested by a caller).
    """

    task: str
    architecture: str | None
    model_type: str | None
    max_context: int | None
    has_chat_template: bool
    hidden_size: int | None = None
    labels: tuple[str, ...] = ()
    weights_bytes: int = 0
    parameters: int = 0
    sentence_transformers: bool = False
    weight_files: tuple[str, ...] = field(default_factory=tuple)

    @property
    def format(self) -> str:
        """The artifact format name for this task, e.g. ``"hf-text-generation"``."""
        return FORMAT_FOR_TASK[self.task]

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-able dict to store as the model version's metadata."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["weight_files"] = list(self.weight_files)
        d["format"] = self.format
        return d


def _parse_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArtifact(f"{path.name} is not valid JSON: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    data = _parse_json(path)
    if not isinstance(data, dict):
        raise InvalidArtifact(f"{path.name} must hold a JSON object")
    return data


def _has_key(obj: Any, key: str, *, truthy: bool = False) -> bool:
    """Whether ``key`` appears at any depth of a JSON value (with a truthy value if asked)."""
    if isinstance(obj, dict):
        if key in obj and (obj[key] or not truthy):
            return True
        return any(_has_key(v, key, truthy=truthy) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_key(v, key, truthy=truthy) for v in obj)
    return False


def model_root(path: Path) -> Path:
    """The folder holding ``config.json``: ``path`` itself, or its only subfolder.

    Archives often wrap a model in one top-level folder; this finds it.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    entries = [p for p in path.iterdir() if not p.name.startswith(".")] if path.is_dir() else []
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    return path


def _safetensors_tensors(path: Path) -> tuple[int, int]:
    """(parameter count, byte size) from a safetensors header, without reading the data."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise InvalidArtifact(f"{path.name} is not a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > _SAFETENSORS_HEADER_LIMIT:
                raise InvalidArtifact(f"{path.name} has an implausible safetensors header")
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"{path.name} is not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidArtifact(f"{path.name} is not a safetensors file")
    params = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for d in meta.get("shape", []):
            count *= int(d)
        params += count
    return params, path.stat().st_size


def _detect_task(config: dict[str, Any], sentence_transformers: bool) -> str:
    archs = config.get("architectures") or []
    arch = archs[0] if archs else ""
    if sentence_transformers:
        return "embeddings"
    if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
        return "text-generation"
    if arch.endswith("ForSequenceClassification"):
        return "text-classification"
    if arch.endswith(_ENCODER_SUFFIXES) or (not arch and config.get("model_type") in (
        "bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "deberta-v2", "electra",
    )):
        return "embeddings"
    raise InvalidArtifact(
        f"cannot tell the task of architecture {arch or '(none)'!r}; "
        f"name it explicitly as one of {', '.join(TASKS)}"
    )


def inspect_model_folder(path: Path, *, task: str | None = None) -> HFModelInfo:
    """Check a Hugging Face folder is safe and complete, and describe it.

    ``task`` overrides detection (one of :data:`TASKS`). Raises ``UnsafeContent`` for pickle
    files, symbolic links or remote code, ``InvalidArtifact`` for a missing ``config.json``,
    missing safetensors weights or missing tokenizer files.
    """
    root = Path(path)
    if not root.is_dir():
        raise InvalidArtifact(f"{root} is not a folder")
    if task is not None and task not in TASKS:
        raise InvalidArtifact(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")

    files: list[Path] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise UnsafeContent(f"{rel} is a symbolic link; links are refused")
        if p.is_file():
            if p.suffix.lower() in _PICKLE_SUFFIXES:
                raise UnsafeContent(
                    f"only safetensors weights are accepted; {rel} is a pickle-based file"
                )
            files.append(p)

    config_path = root / "config.json"
    if not config_path.is_file():
        raise InvalidArtifact("the model folder has no config.json")
    config = _read_json(config_path)
    for p in files:
        if p.suffix.lower() != ".json":
            continue
        data = _parse_json(p)
        rel = p.relative_to(root).as_posix()
        if _has_key(data, "auto_map"):
            raise UnsafeContent(
                f"{rel} declares auto_map (custom model code); remote code is never run"
            )
        if _has_key(data, "trust_remote_code", truthy=True):
            raise UnsafeContent(f"{rel} asks for trust_remote_code; remote code is never run")

    weights = sorted(p for p in files if p.suffix == ".safetensors")
    index_path = root / "model.safetensors.index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        shards = set((index.get("weight_map") or {}).values())
        missing = sorted(s for s in shards if not (root / s).is_file())
        if missing:
            raise InvalidArtifact(f"safetensors shards are missing: {', '.join(missing)}")
    if not weights:
        raise InvalidArtifact("the model folder has no .safetensors weights")
    params = size = 0
    for w in weights:
        n, b = _safetensors_tensors(w)
        params += n
        size += b

    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        raise InvalidArtifact(
            "the model folder has no tokenizer files (tokenizer.json, vocab.txt, vocab.json, "
            "or tokenizer.model)"
        )
    tok_config_path = root / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    has_chat_template = bool(tok_config.get("chat_template")) or any(
        (root / n).is_file() for n in ("chat_template.jinja", "chat_template.json")
    )

    st = (root / "modules.json").is_file()
    detected = task or _detect_task(config, st)

    raw_text_config = config.get("text_config")
    text_config: dict[str, Any] = raw_text_config if isinstance(raw_text_config, dict) else {}
    max_context = None
    for key in _CONTEXT_KEYS:
        value = config.get(key, text_config.get(key))
        if isinstance(value, int) and value > 0:
            max_context = value
            break
    st_config_path = root / "sentence_bert_config.json"
    if st_config_path.is_file():
        seq = _read_json(st_config_path).get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            max_context = min(seq, max_context) if max_context else seq
    model_max = tok_config.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < 10**7:
        max_context = min(model_max, max_context) if max_context else model_max

    labels: tuple[str, ...] = ()
    id2label = config.get("id2label")
    if detected == "text-classification" and isinstance(id2label, dict):
        try:
            labels = tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))
        except (TypeError, ValueError) as exc:
            raise InvalidArtifact(f"config.json has a malformed id2label: {exc}") from exc

    hidden = config.get("hidden_size", config.get("n_embd", config.get("d_model")))
    archs = config.get("architectures") or [None]
    return HFModelInfo(
        task=detected,
        architecture=archs[0],
        model_type=config.get("model_type"),
        max_context=max_context,
        has_chat_template=has_chat_template,
        hidden_size=hidden if isinstance(hidden, int) else None,
        labels=labels,
        weights_bytes=size,
        parameters=params,
        sentence_transformers=st,
        weight_files=tuple(w.relative_to(root).as_posix() for w in weights),
    )


def inspect_for_task(path: Path, task: str, metadata: dict[str, Any]) -> HFModelInfo:
    """Inspect a folder a runtime for ``task`` is about to load.

    The task comes from ``metadata["task"]`` when present, else from detection, else (when the
    architecture says nothing) it is assumed to be ``task``; a folder that holds a model for
    another task is ``InvalidArtifact``.
    """
    wanted = metadata.get("task")
    try:
        info = inspect_model_folder(path, task=wanted)
    except InvalidArtifact as exc:
        if wanted is not None or "name it explicitly" not in exc.message:
            raise
        info = inspect_model_folder(path, task=task)
    if info.task != task:
        raise InvalidArtifact(f"this folder holds a {info.task} model, not {task}")
    return info


def pick_device(requested: str = "auto") -> tuple[str, torch.dtype]:
    """The device and dtype to run on.

    ``"auto"`` (and ``"cuda"``/``"cuda:N"``) pick CUDA when ``torch.cuda.is_available()``, in
    bfloat16 (float16 where bf16 is unsupported); otherwise, and for ``"cpu"``, CPU float32.
    """
    import torch

    if requested != "cpu" and torch.cuda.is_available():
        device = requested if requested.startswith("cuda") else "cuda"
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, dtype
    return "cpu", torch.float32


def load_tokenizer(path: Path) -> Any:
    """The folder's tokenizer, never downloading and never running repository code."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many untyped errors
        raise InvalidArtifact(f"the tokenizer cannot be loaded: {exc}") from exc


def load_model(path: Path, task: str, *, device: str, dtype: torch.dtype) -> Any:
    """The folder's model for ``task`` in eval mode on ``device``; safetensors only, no remote code."""
    import transformers

    classes = {
        "text-generation": transformers.AutoModelForCausalLM,
        "embeddings": transformers.AutoModel,
        "text-classification": transformers.AutoModelForSequenceClassification,
    }
    try:
        model, loading = classes[task].from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=dtype,
            output_loading_info=True,
        )
    except Exception as exc:
        raise InvalidArtifact(f"the model cannot be loaded: {exc}") from exc
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        # weights the checkpoint lacks would be random: refuse rather than serve noise
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InvalidArtifact(
            f"the weights do not fit a {task} model ({len(missing)} missing, e.g. {shown})"
        )
    model.to(device)
    model.eval()
    return model


def text_array(inputs: dict[str, np.ndarray], name: str = "text") -> list[str]:
    """The strings of a BYTES input tensor (any shape, flattened), decoded as UTF-8."""
    if name not in inputs:
        raise InvalidInput(f"the input tensor {name!r} is required", details={"param": name})
    out = []
    for v in np.asarray(inputs[name], dtype=object).ravel():
        if isinstance(v, (bytes, bytearray)):
            try:
                out.append(bytes(v).decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(f"{name!r} must hold UTF-8 text", details={"param": name}) from None
        else:
            out.append(str(v))
    return out
