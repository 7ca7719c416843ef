"""Where a streamed token's time goes: single-stream decode rate measured layer by layer.

Not a test. Each layer adds one part of llama-host's path on top of the one before, so the
differences say what each part costs a token:

  engine    the scheduler thread, a Python consumer iterating the request handle
  guest     plus the wasm guest (Serving.call, streaming chunks to a no-op callback)
  http      plus HTTP: llama-host's server, streamed over httpx
  server    llama.cpp's llama-server, same settings (needs bench/setup.sh)

Rounds alternate the layers (A/B) and medians are printed, in tok/s and ms/token:

    .venv/bin/python bench/layers.py [--preset small] [--tokens 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from llama_host import modelgen
from llama_host.engine import EngineConfig, GenerationRequest
from llama_host.preload import parse_preload
from llama_host.registry import ModelRegistry
from llama_host.serving import ModelRoute, Serving

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bench" / "out" / "llama.cpp" / "bin"
PROMPT = "Once upon a time, in a small village by the sea,"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_rate(registry: ModelRegistry, n: int) -> float:
    served = registry.get("default")
    handle = served.engine.submit(GenerationRequest(served.model.tokenize(PROMPT), max_tokens=n, ignore_eos=True))
    return rate([time.perf_counter() for out in handle if out.text])


def has_text(event: bytes | str) -> bool:
    """A completion chunk that carries generated text (not the final or the usage chunk)."""
    return event[:1] in ("{", b"{") and any(c.get("text") for c in json.loads(event).get("choices", []))


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def guest_rate(serving: Serving, n: int) -> float:
    times: list[float] = []
    body = json.dumps({"model": "default", "prompt": PROMPT, "max_tokens": n, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()

    def on_event(event: bytes) -> bool:
        if has_text(event):
            times.append(time.perf_counter())
        return True  # False would mean the reader is gone: the guest would stop

    serving.call("complete", body, on_event)
    return rate(times)


def http_rate(client: httpx.Client, port: int, n: int) -> float:
    body = {"model": "default", "prompt": PROMPT, "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "stream": True}
    times = []
    with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and has_text(line[6:]):
                times.append(time.perf_counter())
    return rate(times)


def start(argv: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"{argv[0]} did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", default="engine,guest,http,server")
    args = parser.parse_args()
    layers = args.layers.split(",")
    model = modelgen.build(args.preset)
    config = EngineConfig(ctx_size=1024, parallel=1, batch_size=512, threads=args.threads)
    procs = []
    registry = serving = None
    if {"engine", "guest"} & set(layers):
        registry = ModelRegistry.load([parse_preload(f"default:GGML:CPU:{model}")], config)
        serving = Serving(registry, [ModelRoute("default", "default")])
    ports = {}
    common = ["--threads", str(args.threads), "--batch-size", "512"]
    if "http" in layers:
        ports["http"] = free_port()
        procs.append(start([str(ROOT / ".venv" / "bin" / "llama-host"), "--nn-preload", f"default:GGML:CPU:{model}",
                            "default", "auto", "--socket-addr", f"127.0.0.1:{ports['http']}", "--ctx-size", "1024",
                            "--parallel", "1", "--log-level", "warning", *common], ports["http"]))
    if "server" in layers:
        ports["server"] = free_port()
        procs.append(start([str(BIN / "llama-server"), "-m", str(model), "--port", str(ports["server"]),
                            "-t", str(args.threads), "-tb", str(args.threads), "-c", "1024", "-np", "1",
                            "-b", "512", "-ub", "512", "-ngl", "0", "--no-webui"], ports["server"]))
    measure = {
        "engine": lambda: engine_rate(registry, args.tokens),
        "guest": lambda: guest_rate(serving, args.tokens),
        "http": lambda: http_rate(client, ports["http"], args.tokens),
        "server": lambda: http_rate(client, ports["server"], args.tokens),
    }
    rates: dict[str, list[float]] = {k: [] for k in layers}
    try:
        with httpx.Client(timeout=600) as client:
            for k in layers:  # warm-up
                measure[k]()
            for _ in range(args.repeats):
                for k in layers:
                    rates[k].append(measure[k]())
        print(f"{model.name}, {args.tokens} tokens, {args.repeats} rounds, load {os.getloadavg()[0]:.2f}")
        for k in layers:
            r = statistics.median(rates[k])
            print(f"  {k:7s} {r:8.1f} tok/s  {1000 / r:6.3f} ms/token   (min {min(rates[k]):.1f}, max {max(rates[k]):.1f})")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
            p.wait(30)
        if serving is not None:
            serving.close()
            registry.close()


if __name__ == "__main__":
    main()
