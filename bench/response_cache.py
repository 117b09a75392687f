"""Benchmark: the response cache (a version's serving setting ``response_cache``).

``modelyard serve`` on core 0 holds each model twice, as ``cached`` (the setting on) and ``plain``
(off); ``wrk`` on core 1 drives 64 keep-alive clients in a closed loop, sending binary OIP v2
requests that its Lua ``request()`` makes, the two versions in alternating windows (ABBA, as
``serving_engine.py`` does: this VM's cores change speed within seconds):

* **repeated requests** (the medium MLP, 784-2048-2048-2048-10): the clients cycle through 256
  inputs, all remembered before the windows start, so every request to ``cached`` is a hit.
  Ratio: answers/s from the cache / computed.
* **every request new** (the tiny digits MLP, the cheapest model to compute): a counter written
  into the low bytes of the first four inputs makes each request new (across windows too), so
  every lookup misses and every answer is remembered (the oldest evicted once the cache is full).
  Ratio: answers/s with the cache / without: what it costs when it never helps.

Every answer must be 200. Prints answers/s of each side and the ratio.

    apt-get install wrk
    python bench/response_cache.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import medium_mlp, tiny_digits  # noqa: E402
from serving_engine import (  # noqa: E402
    CLIENT_CORE, SERVER_CORE, Req, Result, _free_port, abba, oip_request, start_modelyard, total_rps,
    wait_ready, wrk_script_loop,
)

CLIENTS = 64
_HEAD = """wrk.method = "POST"
wrk.path = "{path}"
{headers}
local f = io.open("{bodies}", "rb")
local all = f:read("*a")
f:close()
"""
#: the clients cycle through the bodies (all of one size) in the file
_CYCLE = """local size = {size}
local n = #all / size
local i = 0
request = function()
  local body = all:sub(i * size + 1, (i + 1) * size)
  i = (i + 1) % n
  return wrk.format(nil, nil, nil, body)
end
"""
#: each request new: a counter (from ``start``) in the lowest byte of the first four floats
_COUNT = """local at = {offset}
local c = {start}
local function byte(k) return string.char(math.floor(c / 256 ^ k) % 256) end
request = function()
  c = c + 1
  local body = all:sub(1, at) .. byte(0) .. all:sub(at + 2, at + 4) .. byte(1) .. all:sub(at + 6, at + 8)
    .. byte(2) .. all:sub(at + 10, at + 12) .. byte(3) .. all:sub(at + 14)
  return wrk.format(nil, nil, nil, body)
end
"""


def script(folder: Path, name: str, reqs: list[Req], tail: str) -> Path:
    """A wrk script sending ``reqs``' bodies (one head for all: they differ in their tensors)."""
    bodies = folder / f"{name}.bin"
    bodies.write_bytes(b"".join(r.body for r in reqs))
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in reqs[0].headers)
    path = folder / f"{name}.lua"
    path.write_text(_HEAD.format(path=reqs[0].path, headers=headers, bodies=bodies) + tail)
    return path


def checked(result: Result) -> Result:
    if result.ok != sum(result.statuses.values()):
        raise SystemExit(f"not every answer was 200: {dict(result.statuses)}")
    return result


def upload(url: str, key: str, name: str, model: Path, serving: dict[str, object]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
        r = http.post(f"/api/v1/models/{name}/versions",
                      params={"stage": "production", "tags": json.dumps({"serving": serving})},
                      content=model.read_bytes(), headers={"content-type": "application/octet-stream"})
        r.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of each side per measurement")
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CORE})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-cache-") as tmp:
        folder = Path(tmp)
        key = f"my_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
        port = _free_port()
        proc = start_modelyard(port, 0, key, folder)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/v2/health/ready", proc)
            medium, tiny = medium_mlp(folder / "medium.onnx"), tiny_digits(folder / "tiny.onnx")
            for prefix, model in (("medium", medium), ("tiny", tiny)):
                upload(url, key, f"{prefix}-cached", model, {"response_cache": True})
                upload(url, key, f"{prefix}-plain", model, {})
            print(f"# response_cache: server on core {SERVER_CORE}, wrk on core {CLIENT_CORE} ({CLIENTS} clients), "
                  f"{args.seconds:g} s of each side in alternating windows (ABBA)")

            rows = rng.random((256, 784), dtype=np.float32)
            scripts = {}
            for name in ("medium-cached", "medium-plain"):
                reqs = [oip_request(f"/v2/models/{name}/infer", key, "input", row[None, :], "logits") for row in rows]
                scripts[name] = script(folder, name, reqs, _CYCLE.format(size=len(reqs[0].body)))
            checked(wrk_script_loop(port, scripts["medium-cached"], CLIENTS, 2))  # every input remembered
            hits, computed = abba(lambda s: checked(wrk_script_loop(port, scripts["medium-cached"], CLIENTS, s)),
                                  lambda s: checked(wrk_script_loop(port, scripts["medium-plain"], CLIENTS, s)),
                                  args.seconds, 2.0)
            print(f"medium MLP, 256 inputs repeated: from the cache {total_rps(hits):,.0f} answers/s, "
                  f"computed {total_rps(computed):,.0f}: ratio {total_rps(hits) / total_rps(computed):.1f}")

            x = rng.random((1, 64), dtype=np.float32) * 16
            runs = itertools.count()

            def fresh(name: str) -> Callable[[float], Result]:
                req = oip_request(f"/v2/models/{name}/infer", key, "input", x, "label")
                offset = len(req.body) - x.nbytes  # where the tensor starts

                def run(seconds: float) -> Result:
                    tail = _COUNT.format(offset=offset, start=next(runs) * 2**24)
                    return checked(wrk_script_loop(port, script(folder, name, [req], tail), CLIENTS, seconds))
                return run

            missed, plain = abba(fresh("tiny-cached"), fresh("tiny-plain"), args.seconds, 1.0)
            print(f"tiny MLP, every request new: with the cache (every lookup missed) {total_rps(missed):,.0f} "
                  f"answers/s, without {total_rps(plain):,.0f}: ratio {total_rps(missed) / total_rps(plain):.2f}")
            stats = httpx.get(f"{url}/v2/models/tiny-cached/stats", headers={"Authorization": f"Bearer {key}"}).json()
            inference = stats["model_stats"][0]["inference_stats"]
            print(f"  (tiny-cached: {inference['cache_hit']['count']:,} hits, {inference['cache_miss']['count']:,} "
                  "misses)")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
