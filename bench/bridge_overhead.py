"""What the WASI-NN bridge costs: a guest round trip per request, and per streamed token.

Not a test: prints medians. Per request: instantiate a fresh sandboxed instance, run a guest
that loads a graph and finishes (no generation). Per token: a guest streaming N tokens with
compute_single + get_output_single, minus the same N tokens taken from the engine directly.

    .venv/bin/python bench/bridge_overhead.py [--tokens 256]
"""

from __future__ import annotations

import argparse
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


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
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
        through_guest = timed(lambda: runner.run(streaming, on_emit=lambda _: None), args.repeats)

        served = registry.get("default")
        prompt = served.model.tokenize("hello")
        direct = timed(lambda: list(served.engine.submit(
            GenerationRequest(prompt, max_tokens=args.tokens, ignore_eos=True))), args.repeats)
    per_token = (through_guest - direct - per_request) / args.tokens
    print(f"guest round trip per request: {per_request * 1e3:8.3f} ms   (target < 1 ms)")
    print(f"bridge cost per streamed token: {per_token * 1e6:6.1f} µs   (target < 50 µs)")
    print(f"  ({args.tokens} tokens: {through_guest * 1e3:.1f} ms through the guest, {direct * 1e3:.1f} ms direct)")


if __name__ == "__main__":
    main()
