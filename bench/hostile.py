"""A hostile-input campaign against a live llama-host: it must end with zero crashes, zero hangs
and zero undocumented 5xx, with RSS and file descriptors flat after warm-up.

    .venv/bin/python bench/hostile.py                 # a generated model, 60 s of load
    .venv/bin/python bench/hostile.py --minutes 5 --model model.gguf --template chatml

Phases: malformed and edge-valued bodies on every route; 32 clients (streamed, non-streamed,
abandoned) for the load time; 300 idle and 50 slowloris connections; 40 abandoned streams; a
hostile template; damaged model files at the command line; SIGTERM under load. Everything goes
to 127.0.0.1 only, and every loop is bounded in count and time. Prints a table and exits 1 on any
failure.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from live import Server  # noqa: E402

from llama_host import modelgen  # noqa: E402

DOCUMENTED = {200, 400, 401, 404, 405, 408, 413, 431, 503}  # README: every status the server answers
HANG_S = 60  # a request unanswered this long is a hang

OPENAI_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/apply-template"]
COMPAT_ROUTES = [("PUT", "/put/text"), ("POST", "/api/completion"), ("POST", "/generate"), ("POST", "/agenerate"),
                 ("POST", "/embeddings")]
EDGE_VALUES = [None, True, -1, 0, 1, 2**31, 2**63, 2**64 + 1, -(2**63), 1e308, -1e308, 1e-320, 0.5, "", "x" * 100_000,
               [], {}, [1] * 10_000, {"a": {"b": {"c": []}}}, "\u0000", "\ufffd", -0.0]
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "n", "stop", "seed", "logit_bias", "presence_penalty", "frequency_penalty", "repeat_penalty",
          "response_format", "grammar", "stream", "stream_options", "logprobs", "top_logprobs", "input", "tools",
          "tool_choice", "ignore_eos", "echo", "suffix", "user", "encoding_format"]
RAW_BODIES = [b"", b"{", b"[]", b"null", b"1e999999", b'"str"', b"[" * 200_000, b'{"a":' * 50_000, b"\xff\xfe\xfd",
              b'{"model": "default", "messages": [{"role": "user", "content": "\\ud800"}]}',
              b'{"model": "default", "prompt": "a\x00b", "max_tokens": 2}',
              json.dumps({"model": "x" * 5_000_000}).encode()]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: collections.Counter = collections.Counter()
        self.failures: list[str] = []

    def status(self, phase: str, code: int, detail: str = "") -> None:
        with self.lock:
            self.statuses[(phase, code)] += 1
            if code not in DOCUMENTED:
                self.failures.append(f"{phase}: undocumented {code} {detail[:300]}")

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


def request(tally: Tally, phase: str, server: Server, method: str, path: str, **kw) -> httpx.Response | None:
    try:
        r = httpx.request(method, server.url + path, timeout=HANG_S, **kw)
    except httpx.TimeoutException:
        tally.fail(f"{phase}: {method} {path} hung for {HANG_S} s")
        return None
    except httpx.TransportError as e:
        tally.fail(f"{phase}: {method} {path}: {type(e).__name__} {e}")
        return None
    tally.status(phase, r.status_code, r.text)
    return r


def sample(pid: int) -> tuple[int, int]:
    """RSS in KiB and open file descriptors of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# --- phases ----------------------------------------------------------------------------------


def malformed(server: Server, tally: Tally, rng: random.Random) -> None:
    jobs = []
    for path in OPENAI_ROUTES:
        jobs += [("POST", path, {"content": body}) for body in RAW_BODIES]
        for field in FIELDS:
            for value in EDGE_VALUES:
                body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi",
                        "input": "hi", "max_tokens": 2, field: value}
                jobs.append(("POST", path, {"json": body}))
    for method, path in COMPAT_ROUTES:
        jobs += [(method, path, {"content": body}) for body in RAW_BODIES]
        jobs += [(method, path, {"json": {"prompt": v, "tokens": v, "text": v, "params": v}}) for v in EDGE_VALUES]
    jobs += [("GET", "/v1/models/" + "x" * 10_000, {}), ("DELETE", "/v1/models", {}), ("POST", "/health", {}),
             ("GET", "/" + "%00" * 1000, {})]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: request(tally, "malformed", server, j[0], j[1], **j[2]), jobs))
    print(f"  malformed: {len(jobs)} requests")


def load(server: Server, tally: Tally, seconds: float, clients: int = 32) -> None:
    stop = time.monotonic() + seconds
    counts = collections.Counter()

    def client(i: int) -> None:
        rng = random.Random(i)
        while time.monotonic() < stop:
            kind = rng.choice(["chat", "stream", "complete", "abandon", "embed"])
            counts[kind] += 1
            n = rng.randint(1, 48)
            if kind == "chat":
                request(tally, "load", server, "POST", "/v1/chat/completions",
                        json={"model": "default", "max_tokens": n, "messages": [{"role": "user", "content": "hi " * n}]})
            elif kind == "complete":
                request(tally, "load", server, "POST", "/v1/completions",
                        json={"model": "default", "prompt": "a b c " * n, "max_tokens": n, "temperature": rng.random()})
            elif kind == "embed":
                request(tally, "load", server, "POST", "/v1/embeddings", json={"model": "default", "input": "x " * n})
            else:
                try:
                    with httpx.stream("POST", server.url + "/v1/completions", timeout=HANG_S,
                                      json={"model": "default", "prompt": "go", "max_tokens": 4 * n, "stream": True,
                                            "ignore_eos": True}) as r:
                        tally.status("load", r.status_code)
                        for j, _ in enumerate(r.iter_lines()):
                            if kind == "abandon" and j >= 3:
                                break
                except httpx.TimeoutException:
                    tally.fail("load: a stream hung")
                except httpx.TransportError as e:
                    tally.fail(f"load: stream: {type(e).__name__} {e}")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    print(f"  load: {clients} clients, {seconds:.0f} s, {dict(counts)}")


def sockets(server: Server, tally: Tally, idle: int = 300, slow: int = 50, timeout_s: float = 10) -> None:
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(idle + slow)]
    for s in socks[idle:]:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    if not server.healthy():
        tally.fail("sockets: the server stopped answering while holding idle connections")
    end = time.monotonic() + timeout_s + 5
    while time.monotonic() < end:  # slowloris: a byte a second
        for s in socks[idle:]:
            try:
                s.sendall(b"x")
            except OSError:
                pass
        time.sleep(1)
    still_open = sum(not _closed_by_server(s) for s in socks)
    if still_open:
        tally.fail(f"sockets: {still_open} of {idle + slow} connections still open after the head timeout")
    print(f"  sockets: {idle} idle + {slow} slowloris, {still_open} left open")


def _closed_by_server(sock: socket.socket) -> bool:
    """Reads what is left (a 408 for a slow head) up to the server's close; False if it is open."""
    sock.settimeout(0.5)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        sock.close()


def abandoned_streams(server: Server, tally: Tally, n: int = 40) -> None:
    def one(_):
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=HANG_S,
                          json={"model": "default", "stream": True, "max_tokens": 4000, "ignore_eos": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as r:
            tally.status("abandoned", r.status_code)
            next(r.iter_lines())

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    deadline = time.monotonic() + 30
    while "busy_sequences" in (m := httpx.get(server.url + "/metrics").text) and any(
            line.startswith("llama_host_busy_sequences{") and not line.endswith(" 0.0") for line in m.splitlines()):
        if time.monotonic() > deadline:
            tally.fail("abandoned: sequences still busy 30 s after their clients left")
            break
        time.sleep(0.1)
    print(f"  abandoned: {n} streams")


def hostile_template(model: Path, tally: Tally) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(["{{ 'x' * 10**12 }}", "{% set l = [1] %}{% for i in range(40) %}{% set l = l + l %}"
                                  "{% endfor %}{{ l }}", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                                  "{{ " + "(" * 10_000 + "1" + ")" * 10_000 + " }}", "{% for i in range(10**9) %}x{% endfor %}"]):
            path = Path(tmp) / f"hostile{i}.jinja"
            path.write_text(text)
            s = Server([f"--nn-preload=default:GGML:CPU:{model}", "default", str(path)])
            try:
                for _ in range(2):
                    request(tally, "template", s, "POST", "/v1/chat/completions",
                            json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                if not s.healthy():
                    tally.fail(f"template {text[:40]!r}: the server stopped answering")
            finally:
                if s.stop() != 0:
                    tally.fail(f"template {text[:40]!r}: the server exited with {s.proc.returncode}")
    print("  templates: 5 hostile templates")


def hostile_files(model: Path, tally: Tally) -> None:
    data = model.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "2**40 tensors": data[:8] + struct.pack("<Q", 1 << 40) + data[16:],
               "2**60-byte key": data[:24] + struct.pack("<Q", 1 << 60) + data[32:], "zeros": b"GGUF" + bytes(4096),
               "random": b"GGUF" + random.Random(0).randbytes(1 << 16)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in damaged.items():
            path = Path(tmp) / "bad.gguf"
            path.write_bytes(content)
            p = subprocess.run([sys.executable, "-m", "llama_host.cli", "--socket-addr", "127.0.0.1:0",
                                "--log-level", "warning", f"--nn-preload=default:GGML:CPU:{path}", "default", "chatml"],
                               capture_output=True, text=True, timeout=120)
            lines = p.stderr.strip().splitlines()
            if p.returncode != 1 or len(lines) != 1 or str(path) not in lines[0]:
                tally.fail(f"model file {name}: exit {p.returncode}, stderr {p.stderr[-300:]!r}")
    print(f"  model files: {len(damaged)} damaged GGUFs")


def sigterm_under_load(model: Path, tally: Tally) -> None:
    s = Server([f"--nn-preload=default:GGML:CPU:{model}", "--ctx-size", "8192", "--shutdown-grace", "2", "default",
                "chatml"])
    ends = collections.Counter()

    def one(_):
        try:
            with httpx.stream("POST", s.url + "/v1/completions", timeout=HANG_S,
                              json={"model": "default", "prompt": "x", "max_tokens": 8000, "stream": True,
                                    "ignore_eos": True}) as r:
                last = [line for line in r.iter_lines() if line][-1]
                # Streaming: it ends with [DONE]; still queued at the grace: a 503.
                ends[last if r.status_code == 200 else r.status_code] += 1
        except httpx.TransportError as e:
            ends[type(e).__name__] += 1

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        time.sleep(1.0)
        s.proc.send_signal(signal.SIGTERM)
        for f in futures:
            f.result()
    code = s.proc.wait(30)
    if code != 0 or not set(ends) <= {"data: [DONE]", 503} or "Traceback" in s.log():
        tally.fail(f"sigterm: exit {code}, stream ends {dict(ends)}")
    print(f"  sigterm: exit {code}, stream ends {dict(ends)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a GGUF (default: the generated 'tiny' model)")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--minutes", type=float, default=1.0, help="time under load (32 clients)")
    args = parser.parse_args()
    model = args.model or modelgen.build("tiny")
    tally = Tally()
    rng = random.Random(0)
    server = Server([f"--nn-preload=default:GGML:CPU:{model}", "--ctx-size", "4096", "--parallel", "4",
                     "--queue-size", "16", "--timeout-head", "10", "default", args.template])
    samples = []
    try:
        print("campaign against", server.url)
        malformed(server, tally, rng)
        load(server, tally, 10)  # warm-up
        samples.append(sample(server.proc.pid))
        load(server, tally, args.minutes * 60)
        sockets(server, tally)
        abandoned_streams(server, tally)
        malformed(server, tally, rng)
        time.sleep(6)  # keep-alive connections of the clients close
        samples.append(sample(server.proc.pid))
        if server.proc.poll() is not None:
            tally.fail(f"the server died with {server.proc.returncode}")
    finally:
        code = server.stop()
        if code != 0:
            tally.fail(f"the server exited with {code}")
        if "Traceback" in server.output:
            tally.fail("the server logged a traceback: " + server.output[server.output.index("Traceback"):][:500])
    hostile_template(model, tally)
    hostile_files(model, tally)
    sigterm_under_load(model, tally)

    (rss0, fds0), (rss1, fds1) = samples
    print(f"\nRSS after warm-up {rss0 / 1024:.1f} MiB, at the end {rss1 / 1024:.1f} MiB; fds {fds0} -> {fds1}")
    if rss1 > rss0 * 1.25 + 20 * 1024:
        tally.fail(f"RSS grew from {rss0} KiB to {rss1} KiB")
    if fds1 > fds0 + 4:
        tally.fail(f"file descriptors grew from {fds0} to {fds1}")
    print("\nstatus counts:")
    for (phase, code), n in sorted(tally.statuses.items()):
        print(f"  {phase:10} {code}  {n}")
    print(f"\n{len(tally.failures)} failures")
    for f in tally.failures[:50]:
        print("  " + f)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
