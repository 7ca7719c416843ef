"""Aggregate decode throughput of the engine at 1, 2, 4 and 8 concurrent sequences.

Not a test: prints tokens/s so that the gain from batching is visible. Uses the ``bench`` preset
(shaped like a 1.1B model, Q4_0; generated on first use, a few minutes) unless told otherwise:

    .venv/bin/python bench/engine_throughput.py [--preset bench] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from llama_host import modelgen
from llama_host.engine import Engine, EngineConfig, GenerationRequest, Model


def run(engine: Engine, model: Model, n: int, tokens: int) -> float:
    prompts = [model.tokenize(f"Request {i}: tell me something about the number {i * 7}.") for i in range(n)]
    handles = []
    started = time.perf_counter()
    for p in prompts:
        handles.append(engine.submit(GenerationRequest(p, max_tokens=tokens, ignore_eos=True)))
    threads = [threading.Thread(target=h.text) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert all(h.result.completion_tokens == tokens for h in handles)
    return n * tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--quant")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,2,4,8")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    path = modelgen.build(args.preset, quant=args.quant)
    print(f"model: {path.name}")
    with Model(path) as model, Engine(
        model, EngineConfig(ctx_size=512, parallel=max(levels), batch_size=512, threads=args.threads)
    ) as engine:
        run(engine, model, 1, 8)  # warm-up
        rates = {}
        for n in levels:
            rates[n] = statistics.median(run(engine, model, n, args.tokens) for _ in range(args.repeats))
            print(f"{n} concurrent: {rates[n]:7.1f} tok/s aggregate  ({rates[n] / rates[levels[0]]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
