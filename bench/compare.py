"""llama-host against llama.cpp's llama-server, llama-bench, llama-batched-bench and llama-cpp-python.

Not a test: one command that starts each server as a subprocess on an ephemeral port (same model,
threads, context per sequence, batch and parallel settings), runs every scenario against
llama-host and each baseline in alternating A/B order, takes medians of the repeats, prints a
table of ratios (llama-host / baseline) last and writes it into bench/RESULTS.md (one section
per preset; the rest of the file is kept). Needs bench/setup.sh first.

    .venv/bin/python bench/compare.py [--preset bench|small] [--repeats N] [--quick] [--gpu]
        [--scenarios decode,ttft,multiturn,aggregate,engine,bandwidth] [--wait-quiet SECONDS]

Scenarios (lengths are equal everywhere: ``ignore_eos`` for llama-host and llama-server, the EOS
token banned through ``logit_bias`` for llama-cpp-python's server, which has no ``ignore_eos``):
  decode      single-stream decode tok/s, 128 tokens (streamed: first to last token; 3x the
              repeats, with the spread of the per-round llama-host/llama-server ratios)
  ttft        time to first token of a 512-token prompt (streamed; a fresh prompt every time)
  multiturn   second-turn TTFT of a chat whose first turn is in the prefix cache
  aggregate   tok/s of N concurrent 128-token requests, N = 1, 2, 4, 8, 32, 64, servers at --parallel N
  engine      llama-bench tg128 and llama-batched-bench (llama.cpp without a server)
  bandwidth   numpy copy bandwidth over the model's bytes per token: the decode ceiling
Peak RSS (VmHWM) of every server process is always recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = OUT / "llama.cpp" / "bin"
LCP_PY = OUT / "venv-lcp" / "bin" / "python"
HOST_BIN = ROOT / ".venv" / "bin" / "llama-host"
RESULTS = ROOT / "bench" / "RESULTS.md"
LOGS = OUT / "logs"

HOST, SERVER, LCP = "llama-host", "llama-server", "llama-cpp-python"
THREADS = 2
BATCH = 512
DECODE_ROUNDS = 3  # single-stream decode runs this many times --repeats rounds
GPU_LAYERS = 0  # --gpu: every layer offloaded (llama-host's GPU target, -ngl 99 for llama.cpp's tools)
CTX = 1024  # context per sequence (llama-host: --ctx-size; llama-server: -c CTX*N with -np N)
DECODE_PROMPT = "Once upon a time, in a small village by the sea,"

WORDS = (
    "the of and to in is was for on that with as by at from his her an which have are this "
    "river mountain garden window silver morning history music engine letter paper city ocean "
    "forest winter summer people market bridge castle island planet machine reason answer "
    "question number system language science theory family friend teacher student village "
    "kingdom journey harbor valley lantern meadow thunder whisper crystal shadow marble"
).split()


# --- small helpers ---------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> float:
    return os.getloadavg()[0]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in kB (psutil is not installed)."""
    out = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def wait_quiet(limit_s: float, threshold: float) -> None:
    if limit_s <= 0:
        return
    deadline = time.time() + limit_s
    while loadavg() > threshold and time.time() < deadline:
        log(f"waiting for a quiet machine: load average {loadavg():.2f} > {threshold}")
        time.sleep(30)
    log(f"load average {loadavg():.2f}")


# --- HTTP --------------------------------------------------------------------------------------

@dataclass
class Reply:
    t_start: float
    t_first: float | None = None  # first non-empty content chunk
    t_end: float | None = None  # finish chunk / [DONE] / body read
    text: str = ""
    completion_tokens: int | None = None
    chunks: int = 0


def request(port: int, path: str, body: dict, timeout: float = 600) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode()
    r = Reply(time.perf_counter())
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"POST {path} on :{port}: {resp.status} {resp.read()[:500]!r}")
    if not body.get("stream"):
        doc = json.loads(resp.read())
        r.t_end = time.perf_counter()
        choice = doc["choices"][0]
        r.text = choice.get("text") or (choice.get("message") or {}).get("content") or ""
        r.completion_tokens = (doc.get("usage") or {}).get("completion_tokens")
        conn.close()
        return r
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        now = time.perf_counter()
        if payload == b"[DONE]":
            r.t_end = r.t_end or now
            break
        doc = json.loads(payload)
        if doc.get("usage"):
            r.completion_tokens = doc["usage"].get("completion_tokens")
        for choice in doc.get("choices") or []:
            piece = choice.get("text")
            if piece is None:
                piece = (choice.get("delta") or {}).get("content")
            if piece:
                r.chunks += 1
                r.text += piece
                if r.t_first is None:
                    r.t_first = now
            if choice.get("finish_reason"):
                r.t_end = now
    r.t_end = r.t_end or time.perf_counter()
    conn.close()
    return r


def http_ok(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


# --- servers -----------------------------------------------------------------------------------

class Server:
    def __init__(self, kind: str, model: Path, parallel: int, eos: int) -> None:
        self.kind, self.model, self.parallel, self.eos = kind, model, parallel, eos
        self.port = free_port()
        p = str(self.port)
        if kind == HOST:
            target = "GPU" if GPU_LAYERS else "CPU"
            self.argv = [str(HOST_BIN), "--nn-preload", f"default:GGML:{target}:{model}", "default", "auto",
                         "--socket-addr", f"127.0.0.1:{p}", "--ctx-size", str(CTX),
                         "--parallel", str(parallel),
                         "--batch-size", str(BATCH), "--threads", str(THREADS), "--log-level", "warning"]
            self.health = "/health"
        elif kind == SERVER:
            self.argv = [str(BIN / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", p,
                         "-t", str(THREADS), "-tb", str(THREADS), "-c", str(CTX * parallel),
                         "-np", str(parallel),
                         "--no-kv-unified", "-b", str(BATCH), "-ub", str(BATCH), "-ngl", str(GPU_LAYERS), "--no-webui"]
            self.health = "/health"
        else:  # llama-cpp-python: one request at a time; never interrupt a running stream
            self.argv = [str(LCP_PY), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                         "--port", p, "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
                         "--n_ctx", str(CTX), "--n_batch", str(BATCH), "--n_gpu_layers", str(GPU_LAYERS),
                         "--interrupt_requests", "False"]
            self.health = "/v1/models"
        self.proc: subprocess.Popen | None = None
        self.rss_loaded_kb = self.hwm_kb = None

    @property
    def label(self) -> str:
        return f"{self.kind} (parallel {self.parallel})"

    def start(self) -> Server:
        LOGS.mkdir(parents=True, exist_ok=True)
        logf = open(LOGS / f"{self.model.stem}-{self.kind}-np{self.parallel}.log", "w")
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        deadline = time.time() + 600
        while not http_ok(self.port, self.health):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; see {logf.name}")
            if time.time() > deadline:
                raise RuntimeError(f"{self.label} not healthy after 600 s; see {logf.name}")
            time.sleep(0.2)
        # One short request so that weights are paged in and lazy set-up is done.
        self.complete("Hello", 4, stream=False)
        self.rss_loaded_kb = proc_status(self.proc.pid).get("VmRSS")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.hwm_kb = proc_status(self.proc.pid).get("VmHWM")
        self.proc.send_signal(signal.SIGINT if self.kind == SERVER else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def no_eos(self, body: dict) -> dict:
        if self.kind == LCP:
            body["logit_bias"] = {str(self.eos): -100}
        else:
            body["ignore_eos"] = True
        return body

    def complete(self, prompt: str, n: int, stream: bool) -> Reply:
        body = self.no_eos({"model": "default", "prompt": prompt, "max_tokens": n, "temperature": 0,
                            "stream": stream})
        if stream and self.kind != LCP:
            body["stream_options"] = {"include_usage": True}
        return request(self.port, "/v1/completions", body)

    def chat(self, messages: list[dict], n: int, stream: bool) -> Reply:
        body = self.no_eos({"model": "default", "messages": messages, "max_tokens": n, "temperature": 0,
                            "stream": stream})
        if stream and self.kind != LCP:
            body["stream_options"] = {"include_usage": True}
        return request(self.port, "/v1/chat/completions", body)


@contextlib.contextmanager
def servers(kinds, model, parallel, eos, rss: dict):
    started = []
    try:
        for k in kinds:
            log(f"starting {k} (parallel {parallel})")
            started.append(Server(k, model, parallel, eos).start())
        yield {s.kind: s for s in started}
    finally:
        for s in started:
            s.stop()
            rss.setdefault(s.kind, {})[parallel] = (s.rss_loaded_kb, s.hwm_kb)


def rotations(kinds, repeats):
    """A/B order alternates every repeat so that drifts in machine speed cancel."""
    for r in range(repeats):
        yield r, (kinds if r % 2 == 0 else list(reversed(kinds)))


# --- prompts -------------------------------------------------------------------------------------

class Vocab:
    def __init__(self, model: Path) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
        self.eos = self.llm.token_eos()

    def count(self, text: str) -> int:  # with BOS, as the servers tokenize a completion prompt
        return len(self.llm.tokenize(text.encode(), add_bos=True))

    def prompt(self, n_tokens: int, seed: int) -> str:
        """A text of random words that tokenizes to exactly n_tokens (BOS included)."""
        rng = random.Random(seed)
        words = [f"Note {seed}:"] + [rng.choice(WORDS) for _ in range(n_tokens)]
        lo, hi = 1, len(words)  # the longest prefix of words that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(" ".join(words[:mid])) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        words = words[:lo]
        while (n := self.count(" ".join(words))) < n_tokens:
            words += ["a"] * (n_tokens - n)  # " a" is one token
            while self.count(" ".join(words)) > n_tokens:
                words.pop()
        return " ".join(words)


# --- scenarios -----------------------------------------------------------------------------------

@dataclass
class Results:
    preset: str
    model: Path
    repeats: int
    tokens: int
    ttft_tokens: int
    levels: list[int]
    decode: dict = field(default_factory=dict)  # kind -> tok/s
    decode_pairs: list = field(default_factory=list)  # per round: llama-host / llama-server tok/s
    ttft: dict = field(default_factory=dict)  # kind -> s
    turn2: dict = field(default_factory=dict)  # kind -> s
    turn1: dict = field(default_factory=dict)  # kind -> s (for reference: the cold TTFT)
    aggregate: dict = field(default_factory=dict)  # kind -> {N: tok/s}
    llama_bench: float | None = None
    llama_bench_samples: list = field(default_factory=list)
    library: float | None = None  # bench/decode_loop.py: llama-bench's tg work on build.sh's llama.cpp
    library_samples: list = field(default_factory=list)
    batched: dict = field(default_factory=dict)  # N -> S_TG tok/s
    rss: dict = field(default_factory=dict)  # kind -> {parallel: (loaded kB, peak kB)}
    bandwidth: float | None = None  # GB/s, the better of read and copy: the ceiling's numerator
    bandwidth_copy: float | None = None
    bandwidth_read: float | None = None
    bytes_per_token: int | None = None
    model_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    run_at: str = ""

    @classmethod
    def load_json(cls, path: Path) -> Results:
        """The raw results a run saved in bench/out (JSON turned the int keys into strings)."""
        def ints(d):
            return {int(k) if str(k).isdigit() else k: ints(v) if isinstance(v, dict) else v
                    for k, v in d.items()}

        doc = json.loads(path.read_text())
        doc = {k: ints(v) if isinstance(v, dict) else v for k, v in doc.items()}
        doc["model"] = Path(doc["model"])
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def check_len(res: Results, kind: str, reply: Reply, n: int, what: str) -> None:
    if reply.completion_tokens is not None and reply.completion_tokens != n:
        res.notes.append(f"{what}: {kind} generated {reply.completion_tokens} tokens, not {n}")


def scenario_single(res: Results, srv: dict, vocab: Vocab, scenarios: set[str]) -> None:
    kinds = list(srv)
    n = res.tokens
    if "decode" in scenarios:
        # The cheapest scenario and the one whose target is tightest: more rounds, and the
        # llama-host/llama-server ratio of each round kept, so its spread can be shown.
        rounds = res.repeats * DECODE_ROUNDS
        log(f"decode: {n} tokens, single stream, {rounds} rounds")
        samples = {k: [] for k in kinds}
        for _, order in rotations(kinds, rounds):
            for k in order:
                r = srv[k].complete(DECODE_PROMPT, n, stream=True)
                check_len(res, k, r, n, "decode")
                samples[k].append((n - 1) / (r.t_end - r.t_first))
        res.decode = {k: median(v) for k, v in samples.items()}
        res.decode_pairs = [h / s for h, s in zip(samples[HOST], samples[SERVER])]
        log("  " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in res.decode.items()))
    kinds2 = [k for k in kinds if k != LCP]  # these two are against llama-server only
    if "ttft" in scenarios:
        log(f"ttft: {res.ttft_tokens}-token prompt, {res.repeats} repeats")
        samples = {k: [] for k in kinds2}
        for r_i, order in rotations(kinds2, res.repeats):
            for j, k in enumerate(order):
                prompt = vocab.prompt(res.ttft_tokens, seed=1000 + 10 * r_i + j)  # fresh: no prefix hit
                r = srv[k].complete(prompt, 4, stream=True)
                samples[k].append(r.t_first - r.t_start)
        res.ttft = {k: median(v) for k, v in samples.items()}
        log("  " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in res.ttft.items()))
    if "multiturn" in scenarios:
        log(f"multiturn: second-turn TTFT, {res.repeats} repeats")
        s2 = {k: [] for k in kinds2}
        s1 = {k: [] for k in kinds2}
        for r_i, order in rotations(kinds2, res.repeats):
            for j, k in enumerate(order):
                system = vocab.prompt(res.ttft_tokens - 100, seed=2000 + 10 * r_i + j)
                msgs = [{"role": "system", "content": system},
                        {"role": "user", "content": "Summarize the notes above in one paragraph."}]
                r1 = srv[k].chat(msgs, 32, stream=True)
                msgs += [{"role": "assistant", "content": r1.text},
                         {"role": "user", "content": "Now list three words from them."}]
                r2 = srv[k].chat(msgs, 4, stream=True)
                s1[k].append(r1.t_first - r1.t_start)
                s2[k].append(r2.t_first - r2.t_start)
        res.turn1 = {k: median(v) for k, v in s1.items()}
        res.turn2 = {k: median(v) for k, v in s2.items()}
        log("  " + ", ".join(f"{k} {v * 1000:.0f} ms (turn 1: {res.turn1[k] * 1000:.0f} ms)"
                             for k, v in res.turn2.items()))


def scenario_aggregate(res: Results, srv: dict, n_streams: int) -> None:
    kinds = list(srv)
    n = res.tokens
    log(f"aggregate: {n_streams} concurrent x {n} tokens, {res.repeats} repeats ({', '.join(kinds)})")
    samples = {k: [] for k in kinds}
    for r_i, order in rotations(kinds, res.repeats):
        for k in order:
            replies: list[Reply | Exception] = [None] * n_streams  # type: ignore[list-item]

            def one(i: int, k=k) -> None:
                try:
                    replies[i] = srv[k].complete(f"Request {r_i}-{i}: tell me about the number {i * 7}.", n,
                                                 stream=False)
                except Exception as e:  # noqa: BLE001
                    replies[i] = e

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n_streams)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            total = 0
            for r in replies:
                check_len(res, k, r, n, f"aggregate x{n_streams}")
                total += r.completion_tokens if r.completion_tokens is not None else n
            samples[k].append(total / wall)
    for k, v in samples.items():
        res.aggregate.setdefault(k, {})[n_streams] = median(v)
    log("  " + ", ".join(f"{k} {res.aggregate[k][n_streams]:.1f} tok/s" for k in kinds))


def run_cmd(res: Results, argv: list[str]) -> str:
    res.commands.append(" ".join(shlex.quote(str(a)) for a in argv))
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def scenario_llama_bench(res: Results) -> None:
    """Run before and after the servers; the median of both runs' samples (drift cancels)."""
    log(f"llama-bench tg{res.tokens}")
    out = run_cmd(res, [BIN / "llama-bench", "-m", res.model, "-n", res.tokens, "-p", 0, "-t", THREADS,
                        "-ngl", GPU_LAYERS, "-r", max(3, res.repeats), "-o", "json"])
    row = json.loads(out)[0]
    res.llama_bench_samples += row.get("samples_ts") or [row["avg_ts"]]
    res.llama_bench = median(res.llama_bench_samples)
    this = median(row.get("samples_ts") or [row["avg_ts"]])
    log(f"  {this:.1f} tok/s (median of all runs so far {res.llama_bench:.1f})")
    log(f"the same decode on build.sh's llama.cpp (bench/decode_loop.py, tg{res.tokens})")
    out = run_cmd(res, [ROOT / ".venv" / "bin" / "python", ROOT / "bench" / "decode_loop.py", res.model,
                        "--tokens", res.tokens, "--threads", THREADS, "--ngl", GPU_LAYERS,
                        "--repeats", max(3, res.repeats)])
    res.library_samples += json.loads(out.strip().splitlines()[-1])["samples_ts"]
    res.library = median(res.library_samples)
    log(f"  median of all runs so far {res.library:.1f} tok/s")


def scenario_engine(res: Results) -> None:
    scenario_llama_bench(res)
    log(f"llama-batched-bench -npl {','.join(map(str, res.levels))}")
    out = run_cmd(res, [BIN / "llama-batched-bench", "-m", res.model, "-c", CTX * max(res.levels),
                        "-b", BATCH, "-ub", BATCH, "-npp", 16, "-ntg", res.tokens,
                        "-npl", ",".join(map(str, res.levels)), "-t", THREADS, "-tb", THREADS,
                        "-ngl", GPU_LAYERS, "--output-format", "jsonl"])
    for line in out.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            res.batched[d["pl"]] = d["speed_tg"]
    log("  " + ", ".join(f"x{k}: {v:.1f} tok/s" for k, v in res.batched.items()))


def scenario_bandwidth(res: Results) -> None:
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(str(res.model))
    total = sum(int(t.n_bytes) for t in reader.tensors)
    embd = sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    res.model_bytes = total
    # Decoding one token reads every weight once, except the token embeddings (one row, get_rows).
    res.bytes_per_token = total - embd
    size = 256 * 1024 * 1024  # per thread, far past any cache
    srcs = [np.ones(size // 4, dtype=np.float32) for _ in range(THREADS)]
    dsts = [np.empty_like(s) for s in srcs]

    def best_rate(work, bytes_moved: int) -> float:
        best = 0.0
        for _ in range(5):
            barrier = threading.Barrier(THREADS + 1)

            def one(i: int) -> None:
                barrier.wait()
                work(i)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(THREADS)]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            best = max(best, bytes_moved * THREADS / (time.perf_counter() - t0) / 1e9)
        return best

    # copy: bytes read + bytes written; read: a float32 dot product of the array with itself (SIMD,
    # read-only, like decoding, which streams the weights and writes little).
    res.bandwidth_copy = best_rate(lambda i: np.copyto(dsts[i], srcs[i]), 2 * size)
    res.bandwidth_read = best_rate(lambda i: np.dot(srcs[i], srcs[i]), size)
    res.bandwidth = max(res.bandwidth_copy, res.bandwidth_read)
    log(f"bandwidth: copy {res.bandwidth_copy:.1f} GB/s (read+write), read {res.bandwidth_read:.1f} GB/s "
        f"({THREADS} threads); {res.bytes_per_token / 1e6:.1f} MB/token -> ceiling "
        f"{res.bandwidth * 1e9 / res.bytes_per_token:.1f} tok/s")


# --- report --------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    from importlib.metadata import version

    v = {"llama-host": version("llama-host")}
    try:
        v["llama-cpp-python"] = subprocess.run(
            [str(LCP_PY), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
            capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        v["llama-cpp-python"] = "not installed"
    from llama_host import vendor

    src = Path(vendor.llama_cpp_source())
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    if not commit:
        with contextlib.suppress(Exception):
            out = subprocess.run([str(BIN / "llama-server"), "--version"], capture_output=True, text=True)
            m = re.search(r"version: (\S+ \(\S+\))", out.stdout + out.stderr)
            commit = m.group(1) if m else ""
    v["llama.cpp"] = (f"{commit or '?'} (vendored by llama-cpp-python {v['llama-cpp-python']}: "
                      f"{src.relative_to(ROOT)})")
    return v


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM, {platform.system()} {platform.release()}"


def ratio_row(rows, what, ours, base, unit, fmt, target=None, lower_better=False):
    if ours is None or base is None:
        return
    ratio = ours / base if base else float("nan")
    verdict = ""
    if target is not None:
        ok = ratio <= target if lower_better else ratio >= target
        verdict = f"{'<=' if lower_better else '>='} {target:g}x: {'met' if ok else 'MISSED'}"
    rows.append((what, fmt.format(ours) + unit, fmt.format(base) + unit, f"{ratio:.2f}x", verdict))


def build_rows(res: Results) -> list[tuple]:
    rows: list[tuple] = []
    d = res.decode
    ratio_row(rows, f"decode tok/s, 1 stream, {res.tokens} tok vs llama-server", d.get(HOST), d.get(SERVER),
              "",
              "{:.1f}", 0.95)
    if res.decode_pairs:
        q = statistics.quantiles(res.decode_pairs, n=4) if len(res.decode_pairs) > 1 else [res.decode_pairs[0]] * 3
        rows.append((f"decode, the ratio of each of {len(res.decode_pairs)} A/B rounds: median (quartiles)", "", "",
                     f"{q[1]:.2f}x ({q[0]:.2f}-{q[2]:.2f})", ""))
    ratio_row(rows, f"decode tok/s vs llama-bench tg{res.tokens}", d.get(HOST), res.llama_bench, "", "{:.1f}")
    # The build alone: llama-bench's work through build.sh's library against llama-bench as
    # llama.cpp's own CMake builds it (bench/setup.sh), no server on either side.
    ratio_row(rows, f"build.sh's llama.cpp vs llama.cpp's CMake build, tg{res.tokens} tok/s", res.library,
              res.llama_bench, "", "{:.1f}")
    ratio_row(rows, "decode tok/s vs llama-cpp-python server", d.get(HOST), d.get(LCP), "", "{:.1f}")
    if res.ttft:
        ratio_row(rows, f"TTFT ms, {res.ttft_tokens}-token prompt vs llama-server",
                  res.ttft[HOST] * 1000, res.ttft[SERVER] * 1000, "", "{:.0f}", lower_better=True)
    if res.turn2:
        ratio_row(rows, "second-turn TTFT ms (prefix cache) vs llama-server", res.turn2[HOST] * 1000,
                  res.turn2[SERVER] * 1000, "", "{:.0f}", 1.2, lower_better=True)
    agg = res.aggregate
    for n in res.levels:
        ours = agg.get(HOST, {}).get(n)
        ratio_row(rows, f"aggregate tok/s, {n} stream{'s' * (n > 1)} vs llama-server -np {n}", ours,
                  agg.get(SERVER, {}).get(n), "", "{:.1f}", 0.95 if n in (8, 32, 64) else None)
    for n in res.levels:
        ratio_row(rows, f"aggregate tok/s, {n} stream{'s' * (n > 1)} vs llama-cpp-python server",
                  agg.get(HOST, {}).get(n),
                  agg.get(LCP, {}).get(n), "", "{:.1f}", 3 if n == 8 else None)
    for n in res.levels:
        ratio_row(rows, f"aggregate tok/s, {n} stream{'s' * (n > 1)} vs llama-batched-bench (no server)",
                  agg.get(HOST, {}).get(n), res.batched.get(n), "", "{:.1f}")
    for p in sorted(res.rss.get(HOST, {})):
        ours = (res.rss[HOST][p][1] or 0) / 1024
        base = (res.rss.get(SERVER, {}).get(p, (None, None))[1] or 0) / 1024
        if ours and base:
            ok = ours <= base + 150
            rows.append((f"peak RSS MB (VmHWM), parallel {p} vs llama-server", f"{ours:.0f}", f"{base:.0f}",
                         f"{ours / base:.2f}x ({ours - base:+.0f} MB)",
                         f"<= +150 MB: {'met' if ok else 'MISSED'}"))
    lcp_rss = res.rss.get(LCP, {}).get(1, (None, None))[1]
    host_rss = res.rss.get(HOST, {}).get(1, (None, None))[1]
    if lcp_rss and host_rss:
        rows.append(("peak RSS MB, parallel 1 vs llama-cpp-python server", f"{host_rss / 1024:.0f}",
                     f"{lcp_rss / 1024:.0f}",
                     f"{host_rss / lcp_rss:.2f}x ({(host_rss - lcp_rss) / 1024:+.0f} MB)", ""))
    for name, rate in ((f"llama-bench tg{res.tokens}", res.llama_bench),
                       ("llama-batched-bench -npl 1", res.batched.get(1))):
        if not (rate and d):
            continue
        base_us = 1e6 / rate
        for k in (HOST, SERVER, LCP):
            if d.get(k):
                rows.append((f"per-token overhead us over {name}: {k}", f"{1e6 / d[k] - base_us:.0f}",
                             f"{base_us:.0f} us/tok", "", ""))
    if res.bandwidth and res.bytes_per_token:
        ceiling = res.bandwidth * 1e9 / res.bytes_per_token
        rows.append((f"bandwidth ceiling tok/s (read {res.bandwidth_read:.1f}, "
                     f"copy {res.bandwidth_copy:.1f} GB/s)", f"{ceiling:.1f}",
                     f"{res.bandwidth:.1f} GB/s / {res.bytes_per_token / 1e6:.1f} MB", "", ""))
        for k, v in ((HOST, d.get(HOST)), (SERVER, d.get(SERVER)), ("llama-bench", res.llama_bench),
                     (LCP, d.get(LCP))):
            if v:
                rows.append((f"decode as a fraction of the ceiling: {k}", f"{v / ceiling:.0%}", "", "", ""))
    return rows


def table(rows) -> str:
    head = ("scenario", "llama-host", "baseline", "ratio (host/base)", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def section(res: Results, rows, argv: list[str], elapsed: float) -> str:
    v = versions()
    quiet = res.load[0] <= 1.2 if res.load else None
    lines = [
        f"<!-- preset:{res.preset} -->",
        f"## Preset `{res.preset}`: {res.model.name} "
        f"({(res.model_bytes or res.model.stat().st_size) / 1e6:.0f} MB)",
        "",
        f"Run {res.run_at}, {elapsed / 60:.1f} min, {res.repeats} repeats (medians), "
        f"{res.tokens} generated tokens, {THREADS} threads, {CTX} context cells per sequence, batch {BATCH}.",
        "",
        f"- machine: {machine()}",
        f"- load average (1 min) at the start: {res.load[0]:.2f}"
        + ("" if quiet else " — **above 1.2: other work shared the CPU, treat the numbers as noisy**")
        + f"; after each phase: {', '.join(f'{x:.2f}' for x in res.load[1:])} (these include the"
        " benchmark's own 2 busy threads)",
        "- versions: " + "; ".join(f"{k} {val}" for k, val in v.items()),
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
        "",
        table(rows),
        "",
    ]
    if res.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in dict.fromkeys(res.notes)] + [""]
    lines += ["<details><summary>exact server and tool command lines</summary>", "", "```"]
    lines += [c.replace(str(ROOT) + "/", "") for c in res.commands]
    lines += ["```", "", "</details>", f"<!-- /preset:{res.preset} -->"]
    return "\n".join(lines)


def write_results(res: Results, text: str) -> None:
    start, end = f"<!-- preset:{res.preset} -->", f"<!-- /preset:{res.preset} -->"
    old = RESULTS.read_text() if RESULTS.exists() else (
        "# llama-host against llama.cpp and llama-cpp-python\n\n"
        "Written by `bench/compare.py` (one section per preset; a rerun replaces its preset's section).\n\n")
    if start in old and end in old:
        new = old[: old.index(start)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS.write_text(new)


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench", help="modelgen preset (default: bench)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 repeat, 32 tokens, 128-token prompt, x1 and x2; writes nothing")
    parser.add_argument("--scenarios", default="decode,ttft,multiturn,aggregate,engine,bandwidth")
    parser.add_argument("--concurrency", default="1,2,4,8,32,64",
                        help="the aggregate scenario's stream counts (each server at --parallel N)")
    parser.add_argument("--gpu", action="store_true",
                        help="offload every layer (bench/gpu.sh: a CUDA build of both sides); the section is "
                             "written as PRESET-gpu")
    parser.add_argument("--no-lcp", action="store_true", help="skip llama-cpp-python's server")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the 1-min load average to drop under 1.2")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite the section from bench/out/results-PRESET.json")
    args = parser.parse_args()
    if args.gpu:
        global GPU_LAYERS
        GPU_LAYERS = 99
    if args.render:
        res = Results.load_json(OUT / f"results-{args.preset}.json")
        rows = build_rows(res)
        write_results(res, section(res, rows, res.argv, res.elapsed))
        print(table(rows))
        return
    scenarios = set(args.scenarios.split(","))
    unknown = scenarios - {"decode", "ttft", "multiturn", "aggregate", "engine", "bandwidth"}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for p in (BIN / "llama-server", BIN / "llama-bench", BIN / "llama-batched-bench", LCP_PY, HOST_BIN):
        if not p.exists():
            sys.exit(f"{p} is missing: run ./build.sh and bench/setup.sh first")

    from llama_host import modelgen

    model = Path(modelgen.build(args.preset))
    levels = [int(x) for x in args.concurrency.split(",")]
    res = Results(args.preset + ("-gpu" if args.gpu else ""), model, 1 if args.quick else args.repeats, 32 if args.quick else 128,
                  128 if args.quick else 512, [1, 2] if args.quick else levels)
    vocab = Vocab(model)
    log(f"model {model.name}; repeats {res.repeats}; scenarios {','.join(sorted(scenarios))}")
    wait_quiet(args.wait_quiet, 1.2)
    t_run = time.time()
    res.load.append(loadavg())

    if "bandwidth" in scenarios:
        scenario_bandwidth(res)
    if "engine" in scenarios:
        scenario_engine(res)
        res.load.append(loadavg())

    with_lcp = not args.no_lcp
    kinds1 = [HOST, SERVER] + ([LCP] if with_lcp else [])
    # parallel 1: the single-stream scenarios and aggregate x1, all three servers up at once.
    # llama-cpp-python's server stays up for every N (it decodes one request at a time anyway).
    lcp: Server | None = None
    try:
        if with_lcp and ("aggregate" in scenarios or "decode" in scenarios):
            log("starting llama-cpp-python")
            lcp = Server(LCP, model, 1, vocab.eos).start()
        single = {"decode", "ttft", "multiturn"} & scenarios
        configs = set(res.levels if "aggregate" in scenarios else []) | ({1} if single else set())
        for n in sorted(configs):
            with servers([HOST, SERVER], model, n, vocab.eos, res.rss) as srv:
                if lcp is not None:
                    srv[LCP] = lcp
                if n == 1 and single:
                    scenario_single(res, dict(srv) if "decode" in scenarios else
                                    {k: s for k, s in srv.items() if k != LCP}, vocab, scenarios)
                if "aggregate" in scenarios and n in res.levels:
                    scenario_aggregate(res, srv, n)
                res.commands += [" ".join(shlex.quote(a) for a in srv[k].argv) for k in (HOST, SERVER)]
            res.load.append(loadavg())
    finally:
        if lcp is not None:
            lcp.stop()
            res.rss.setdefault(LCP, {})[1] = (lcp.rss_loaded_kb, lcp.hwm_kb)
            res.commands.append(" ".join(shlex.quote(a) for a in lcp.argv))

    if "engine" in scenarios:
        scenario_llama_bench(res)
    res.elapsed = time.time() - t_run
    res.run_at = time.strftime("%Y-%m-%d %H:%M")
    res.argv = [sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]
    rows = build_rows(res)
    text = section(res, rows, res.argv, res.elapsed)
    writing = not args.no_write and not args.quick
    # --render reads results-PRESET.json: only a run that writes RESULTS.md replaces it.
    out = OUT / f"results-{args.preset}{'' if writing else '-trial'}.json"
    OUT.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()},
                              indent=1, default=str))
    if writing:
        write_results(res, text)
        log(f"wrote {RESULTS.relative_to(ROOT)} (raw: {out.relative_to(ROOT)})")
    print()
    print(f"llama-host / baseline, preset {args.preset} ({model.name}), load average "
          f"{', '.join(f'{x:.2f}' for x in res.load)}")
    print(table(rows))


if __name__ == "__main__":
    main()
