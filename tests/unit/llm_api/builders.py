"""Tiny Hugging Face models built offline for the OpenAI API tests (random weights), and
archives of them (good and hostile)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a model as a service answers requests over the network",
    "continuous batching lets many sequences share each forward pass",
    "hello world, hello model, hello batch",
] * 20


def build_tiny_gpt2(folder: Path, *, n_layer: int = 2, n_embd: int = 64, n_positions: int = 256) -> Path:
    """GPT2Config(n_layer=2, n_embd=64, n_head=2) with a byte-level BPE tokenizer of ~1000 tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=1000, n_positions=n_positions,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tar_gz(folder: Path, *, prefix: str = "model") -> bytes:
    """The folder as a .tar.gz with one top-level directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=prefix)
    return buf.getvalue()


def tar_with(folder: Path, *, extra: list[tarfile.TarInfo], data: dict[str, bytes] | None = None,
             replace: dict[str, bytes] | None = None) -> bytes:
    """A .tar.gz of ``folder`` plus hostile ``extra`` members (``data`` gives their bytes);
    ``replace`` swaps the contents of named files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.iterdir()):
            content = (replace or {}).get(p.name, p.read_bytes())
            info = tarfile.TarInfo(p.name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


def remote_code_config(folder: Path) -> bytes:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    return json.dumps(config).encode()
