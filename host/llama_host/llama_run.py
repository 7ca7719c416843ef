"""``llama-run``: run any WASI command module with the WASI-NN imports, as ``wasmedge`` runs
LlamaEdge's command-line apps.

    llama-run [--dir HOST:GUEST]... [--env K=V]... --nn-preload NAME:GGML:TARGET:PATH... app.wasm [args...]

The guest's stdio is the terminal's and its exit code is returned. Like WasmEdge, a guest run
this way is trusted with the host paths it names in ``load("preload:<path>")``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from llama_host.bridge.runner import GuestLoadError, GuestRunner, RunnerConfig, RunResult
from llama_host.engine import Cancellation, EngineConfig
from llama_host.preload import PreloadError, parse_preloads
from llama_host.registry import LoadError, ModelRegistry


def _pair(text: str, sep: str, what: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return left, right


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-run", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", action="append", default=[], metavar="HOST:GUEST",
                   type=lambda t: _pair(t, ":", "HOST:GUEST"), help="preopen a host folder (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   type=lambda t: _pair(t, "=", "K=V"), help="an environment variable for the guest")
    p.add_argument("--nn-preload", action="append", default=[], metavar="NAME:GGML:TARGET:PATH",
                   help="a model the guest can load by name (repeatable)")
    p.add_argument("--ctx-size", type=int, default=4096, help="context tokens per sequence (default 4096)")
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp (default: all cores)")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds the guest may compute between host calls (default 60)")
    p.add_argument("wasm", help="the WASI command module")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the guest")
    return p


def _interruptible(run: Callable[[Cancellation], RunResult]) -> RunResult | None:
    """``run`` in a thread of its own, so that Ctrl-C is seen at once (the main thread would only
    see it after the host call it waits in, a whole generation): then the generation is
    cancelled, the guest ends, and the answer is None. A second Ctrl-C ends the process."""
    cancel = Cancellation()
    done: list[RunResult] = []
    worker = threading.Thread(target=lambda: done.append(run(cancel)), name="guest", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        cancel.set()
        try:
            worker.join()
        except KeyboardInterrupt:
            os._exit(130)
        return None
    return done[0]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LLAMA_LOG", "WARNING").upper(), stream=sys.stderr,
                        format="llama-run: %(levelname)s %(name)s: %(message)s")
    if args.ctx_size <= 0:
        print("llama-run: error: --ctx-size must be positive", file=sys.stderr)
        return 2
    try:
        preloads = parse_preloads(args.nn_preload)
        wasm = Path(args.wasm).read_bytes()
    except (PreloadError, OSError) as e:
        print(f"llama-run: error: {e}", file=sys.stderr)
        return 2
    try:
        registry = ModelRegistry.load(preloads, EngineConfig(ctx_size=args.ctx_size, parallel=1, threads=args.threads))
    except LoadError as e:
        print(f"llama-run: error: {e}", file=sys.stderr)
        return 1
    with registry:
        with GuestRunner(registry, RunnerConfig(deadline=args.deadline, memory_limit=4 << 30)) as runner:
            try:
                guest = runner.load(wasm)
            except GuestLoadError as e:
                print(f"llama-run: error: {args.wasm}: {e}", file=sys.stderr)
                return 2
            result = _interruptible(lambda cancel: runner.run(
                guest, argv=[os.path.basename(args.wasm), *args.args], env=dict(args.env), dirs=args.dir,
                inherit_stdio=True, allow_host_paths=True, cancel=cancel))
            if result is None:
                print("llama-run: interrupted", file=sys.stderr)
                return 130
    if result.trap:
        print(f"llama-run: the guest was stopped: {result.trap}", file=sys.stderr)
        return 134
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
