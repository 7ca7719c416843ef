"""A replayed multi-turn chat workload: more live conversations than sequences.

N conversations (N = 4 x slots), each a long system prompt and 6 turns; their turns interleaved
(a conversation's next turn waits for its previous answer and for the others' turns before it),
``--clients`` requests at once. Reports turns/s, p50/p99 time to first token (streamed) and the
prompt tokens each server says it evaluated per turn (``timings.prompt_n``), for:
  llama-host                  (its prompt cache on: --cache-ram 8192, the default)
  llama-host --cache-ram 0    (only the slots' own prefix reuse)
  llama-server --cache-ram 0  (and, as llama-server has it by default, with --cache-ram 8192)
on the same model, threads, context per sequence and slot count (bench/compare.py's settings).
Writes a section into bench/RESULTS.md. llama-server comes from bench/setup.sh; without it only
llama-host's rows are run.

    .venv/bin/python bench/chat_replay.py [--preset bench] [--slots 2] [--turns 6] [--system 400]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402 - bench/compare.py: the servers, settings and vocabulary helpers
from compare import BIN, HOST, RESULTS, SERVER, Server, Vocab, log  # noqa: E402

from llama_host import modelgen  # noqa: E402

ANSWER_TOKENS = 32


def stream_chat(port: int, messages: list[dict]) -> tuple[float | None, str, int | None]:
    """(seconds to the first content, the answer, prompt tokens evaluated) of one streamed turn."""
    body = {"model": "default", "messages": messages, "max_tokens": ANSWER_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"chat on :{port}: {resp.status} {resp.read()[:300]!r}")
    first, text, evaluated = None, "", None
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        doc = json.loads(line[5:])
        if "timings" in doc:  # (llama-server's and llama-host's last chunk)
            evaluated = doc["timings"].get("prompt_n")
        for choice in doc.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                first = first or time.perf_counter() - started
                text += piece
    conn.close()
    return first, text, evaluated


def conversations(vocab: Vocab, n: int, system_tokens: int, turns: int, seed: int) -> list[dict]:
    system = vocab.prompt(system_tokens, seed)  # shared by all, as an agent's or a UI's is
    rng = random.Random(seed)
    return [{"system": system, "questions": [" ".join(rng.choice(compare.WORDS) for _ in range(24)) + "?"
                                            for _ in range(turns)]} for _ in range(n)]


def replay(port: int, convs: list[dict], clients: int) -> dict:
    """Every conversation's turns in rounds (turn 1 of each, then turn 2 of each, ...), at most
    ``clients`` requests at once."""
    histories = [[{"role": "system", "content": c["system"]}] for c in convs]
    order = [(t, i) for t in range(len(convs[0]["questions"])) for i in range(len(convs))]
    done = {i: threading.Event() for i in range(len(convs))}  # the conversation's last turn answered
    for e in done.values():
        e.set()
    lock, next_item, ttfts, evaluated = threading.Lock(), [0], [], []

    def worker() -> None:
        while True:
            with lock:
                if next_item[0] >= len(order):
                    return
                turn, i = order[next_item[0]]
                next_item[0] += 1
                done[i].wait()  # (in order: its previous turn was handed out before)
                done[i].clear()
            history = histories[i]
            history.append({"role": "user", "content": convs[i]["questions"][turn]})
            first, answer, n = stream_chat(port, history)
            history.append({"role": "assistant", "content": answer})
            with lock:
                ttfts.append(first)
                evaluated.append(n)
            done[i].set()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    ttfts = sorted(x for x in ttfts if x is not None)
    known = [n for n in evaluated if n is not None]
    return {"turns": len(order), "seconds": seconds, "turns_per_s": len(order) / seconds,
            "ttft_p50": statistics.median(ttfts), "ttft_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "evaluated_per_turn": statistics.mean(known) if known else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system", type=int, default=400, help="system prompt tokens")
    parser.add_argument("--clients", type=int, default=None, help="requests at once (default: the slots)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over every server, each round in another order; medians are reported")
    args = parser.parse_args()
    model = Path(modelgen.build(args.preset))
    vocab = Vocab(model)
    convs = conversations(vocab, 4 * args.slots, args.system, args.turns, seed=7)
    clients = args.clients or args.slots
    runs = [(HOST, "llama-host (--cache-ram 8192)", []), (HOST, "llama-host --cache-ram 0", ["--cache-ram", "0"])]
    if (BIN / "llama-server").exists():
        runs += [(SERVER, "llama-server --cache-ram 0", ["--cache-ram", "0"]),
                 (SERVER, "llama-server --cache-ram 8192", ["--cache-ram", "8192"])]
    else:
        log("no bench/out/llama.cpp/bin/llama-server (bench/setup.sh builds it): llama-host only")
    results: dict[str, list[dict]] = {label: [] for _, label, _ in runs}
    for _, order in compare.rotations(runs, args.repeats):  # (A/B: the machine's speed drifts)
        for kind, label, extra in order:
            srv = Server(kind, model, args.slots, vocab.eos)
            srv.argv += extra
            log(f"starting {label}")
            srv.start()
            try:
                result = replay(srv.port, convs, clients)
            finally:
                srv.stop()
            log(f"{label}: {result}")
            results[label].append(result)
    rows = [(label, {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None for k in rs[0]})
            for label, rs in results.items()]
    write(rows, args, model)


def write(rows: list[tuple[str, dict]], args: argparse.Namespace, model: Path) -> None:
    lines = ["<!-- chat-replay -->",
             f"## Replayed chats: {4 * args.slots} conversations, {args.slots} slots, {args.turns} turns, "
             f"{args.system}-token system prompt ({model.name}, {time.strftime('%Y-%m-%d')})", "",
             f"Written by `bench/chat_replay.py`; {args.clients or args.slots} clients at once, {ANSWER_TOKENS} tokens "
             f"per answer, streamed; medians of {args.repeats} round(s), each in another order.", "",
             "| server | turns/s | p50 TTFT (s) | p99 TTFT (s) | prompt tokens evaluated per turn |",
             "|---|---|---|---|---|"]
    for label, r in rows:
        per_turn = "?" if r["evaluated_per_turn"] is None else f"{r['evaluated_per_turn']:.0f}"
        lines.append(f"| {label} | {r['turns_per_s']:.3f} | {r['ttft_p50']:.3f} | {r['ttft_p99']:.3f} | {per_turn} |")
    base = next((r for label, r in rows if label == "llama-server --cache-ram 8192"), None)
    if base:
        ours = rows[0][1]
        lines += ["", f"llama-host / llama-server (both with their prompt caches): turns/s "
                      f"{ours['turns_per_s'] / base['turns_per_s']:.2f}x, p50 TTFT {ours['ttft_p50'] / base['ttft_p50']:.2f}x"]
    lines.append("<!-- /chat-replay -->")
    text = "\n".join(lines) + "\n"
    print(text)
    old = RESULTS.read_text() if RESULTS.exists() else ""
    start, end = "<!-- chat-replay -->", "<!-- /chat-replay -->"
    if start in old and end in old:
        old = old[:old.index(start)] + old[old.index(end) + len(end) + 1:]
    RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
