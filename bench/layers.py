"""Where a streamed token's time goes: single-stream decode rate measured layer by layer.

Not a test. Each layer adds one part of llama-host's path on top of the one before, so the
differences say what each part costs a token:

  engine    the scheduler thread, a Python consumer iterating the request handle
  guest     plus the wasm guest (Serving.call, streaming chunks to a no-op callback)
  http      plus HTTP: llama-host's server, streamed
  server    llama.cpp's llama-server (needs bench/setup.sh)

Servers, settings, prompt and the rate's definition (first to last token) are compare.py's
decode scenario's; the in-process layers use the same engine settings. The layers' order
alternates every round (A/B) and medians are printed, in tok/s and ms/token:

    .venv/bin/python bench/layers.py [--preset small] [--tokens 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import compare  # bench/compare.py: this script's directory is on sys.path
from llama_host import modelgen
from llama_host.engine import EngineConfig, GenerationRequest
from llama_host.preload import parse_preload
from llama_host.registry import ModelRegistry
from llama_host.serving import ModelRoute, Serving

SERVERS = {"http": compare.HOST, "server": compare.SERVER}


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def engine_rate(registry: ModelRegistry, n: int) -> float:
    served = registry.get("default")
    request = GenerationRequest(served.model.tokenize(compare.DECODE_PROMPT), max_tokens=n, ignore_eos=True)
    return rate([time.perf_counter() for out in served.engine.submit(request) if out.text])


def guest_rate(serving: Serving, n: int) -> float:
    times: list[float] = []
    body = json.dumps({"model": "default", "prompt": compare.DECODE_PROMPT, "max_tokens": n, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()

    def on_event(event: bytes) -> bool:
        if event.startswith(b"{") and any(c.get("text") for c in json.loads(event)["choices"]):
            times.append(time.perf_counter())
        return True  # False would mean the reader is gone: the guest would stop

    serving.call("complete", body, on_event)
    return rate(times)


def server_rate(server: compare.Server, n: int) -> float:
    r = server.complete(compare.DECODE_PROMPT, n, stream=True)
    return (n - 1) / (r.t_end - r.t_first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layers", default="engine,guest,http,server")
    args = parser.parse_args()
    layers = args.layers.split(",")
    model = Path(modelgen.build(args.preset))
    config = EngineConfig(ctx_size=compare.CTX, parallel=1, batch_size=compare.BATCH, threads=compare.THREADS)
    registry = ModelRegistry.load([parse_preload(f"default:GGML:CPU:{model}")], config)
    serving = Serving(registry, [ModelRoute("default", "default")])
    kinds = [SERVERS[k] for k in layers if k in SERVERS]
    try:
        with compare.servers(kinds, model, 1, compare.Vocab(model).eos, rss={}) as srv:
            measure = {
                "engine": lambda: engine_rate(registry, args.tokens),
                "guest": lambda: guest_rate(serving, args.tokens),
                **{k: (lambda kind=kind: server_rate(srv[kind], args.tokens)) for k, kind in SERVERS.items()},
            }
            rates: dict[str, list[float]] = {k: [] for k in layers}
            for k in layers:  # warm-up
                measure[k]()
            for _, order in compare.rotations(layers, args.repeats):
                for k in order:
                    rates[k].append(measure[k]())
    finally:
        serving.close()
        registry.close()
    print(f"{model.name}, {args.tokens} tokens, {args.repeats} rounds, load {os.getloadavg()[0]:.2f}")
    for k in layers:
        r = statistics.median(rates[k])
        print(f"  {k:7s} {r:8.1f} tok/s  {1000 / r:6.3f} ms/token   (min {min(rates[k]):.1f}, max {max(rates[k]):.1f})")


if __name__ == "__main__":
    main()
