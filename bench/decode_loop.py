"""llama-bench's tg test through llama-host's own llama.cpp (the library build.sh installed), for
bench/compare.py's build row: the same decode work as ``llama-bench -p 0 -n N -t T``, one token
per llama_decode on a fresh context each repetition, no sampling, so that what differs from
llama-bench's number is the build of llama.cpp, not a server (a ctypes call per token costs
microseconds against milliseconds of decode). Prints JSON: {"samples_ts": [tokens/s, ...]}.

    .venv/bin/python bench/decode_loop.py MODEL [--tokens 128] [--threads 2] [--repeats 5] [--ngl 0]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from llama_host.engine import Model
from llama_host.engine.context import Batch, Context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ngl", type=int, default=0)
    args = parser.parse_args()
    model = Model(args.model, n_gpu_layers=args.ngl)
    rng = random.Random(0)
    samples = []
    with Context(model, n_ctx=args.tokens + 16, n_batch=512, n_threads=args.threads) as ctx, Batch(1) as batch:
        for rep in range(args.repeats + 1):  # (the first is llama-bench's warm-up run)
            ctx.clear()
            started = time.perf_counter()
            for pos in range(args.tokens):
                batch.clear()
                batch.add(rng.randrange(model.n_vocab), pos, 0, logits=True)
                ctx.decode(batch)
            if rep:
                samples.append(args.tokens / (time.perf_counter() - started))
    print(json.dumps({"samples_ts": samples}))


if __name__ == "__main__":
    main()
