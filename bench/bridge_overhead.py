"""What the WASI-NN bridge costs: a guest round trip per request, and per streamed token.

Not a test: prints medians. Per request: instantiate a fresh sandboxed instance, run a guest
that loads a graph and finishes (no generation). Per token: a guest streaming N tokens with
compute_single + get_output_single + emit, minus the same N tokens taken from the engine
directly (A/B pairs, median of the differences). The same for llama-host's real guest answering
a streamed /v1/completions request (which also formats each chunk as JSON).

    .venv/bin/python bench/bridge_overhead.py [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from wasm_program import Program, load  # noqa: E402

from llama_host import modelgen  # noqa: E402
from llama_host.bridge.runner import GuestRunner  # noqa: E402
from llama_host.engine import EngineConfig, GenerationRequest  # noqa: E402
from llama_host.preload import parse_preloads  # noqa: E402
from llama_host.registry import ModelRegistry  # noqa: E402
from llama_host.serving import ModelRoute, Serving  # noqa: E402


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def paired(a, b, repeats: int) -> float:
    """Median of (a - b) over alternating runs, so drifts in machine speed cancel."""
    diffs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        diffs.append((t1 - t0) - (t2 - t1))
    return statistics.median(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    preloads = parse_preloads([f"default:GGML:CPU:{modelgen.build('tiny')}"])
    with ModelRegistry.load(preloads, EngineConfig(ctx_size=2048, parallel=1)) as registry, GuestRunner(registry) as runner:
        empty = Program()
        empty.call("load_by_name", empty.data(b"default"), 7, empty.slot())
        guest = runner.load(empty.build())
        per_request = timed(lambda: runner.run(guest), args.repeats * 5)

        stream = Program()
        graph, ctx = stream.slot(), stream.slot()
        stream.call("load_by_name", stream.data(b"default"), 7, graph)
        stream.call("init_execution_context", load(graph), ctx)
        stream.call("set_input", load(ctx), 0, stream.tensor(b"hello"))
        meta = f'{{"n-predict": {args.tokens}, "temp": 0.0, "ignore-eos": true}}'.encode()
        stream.call("set_input", load(ctx), 1, stream.tensor(meta))
        stream.stream(load(ctx), stream.alloc(256), 256)
        streaming = runner.load(stream.build())
        served = registry.get("default")
        prompt = served.model.tokenize("hello")

        def direct():
            list(served.engine.submit(GenerationRequest(prompt, max_tokens=args.tokens, ignore_eos=True)))

        def wat_guest():
            runner.run(streaming, on_emit=lambda _: None)

        body = json.dumps({"prompt": "hello", "max_tokens": args.tokens, "ignore_eos": True, "stream": True,
                           "temperature": 0}).encode()
        with Serving(registry, [ModelRoute("default", "default")]) as serving:
            real_request = timed(lambda: serving.call("complete", b"{}"), args.repeats * 5)

            def real_guest():
                serving.call("complete", body, on_event=lambda _: None)

            wat_token = paired(wat_guest, direct, args.repeats) / args.tokens
            real_token = paired(real_guest, direct, args.repeats) / args.tokens
    print(f"guest round trip per request: {per_request * 1e3:8.3f} ms   (target < 1 ms)")
    print(f"  llama-host's guest, a request refused at validation: {real_request * 1e3:.3f} ms")
    print(f"bridge cost per streamed token: {wat_token * 1e6:6.1f} µs   (target < 50 µs)")
    print(f"  llama-host's guest, streamed completion chunks: {real_token * 1e6:.1f} µs per token")


if __name__ == "__main__":
    main()
