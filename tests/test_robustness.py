"""Off the happy path: what a model file, a flag, a client that leaves, a slow or idle socket and a
shutdown under load do to a live server. Each case once killed, wedged or leaked the server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hostile_ggufs import damaged, nan_weights, zero_layers
from live import Server


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_host.cli", "--socket-addr", "127.0.0.1:0", "--log-level",
                           "warning", *args],
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's refusal: a non-zero exit and exactly one line on stderr."""
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-host: error: "), proc.stderr
    return lines[0]


# --- model files and flags: refused before the server listens --------------------------------


@pytest.mark.parametrize("kind", ["truncated", "2**40 tensors", "2**60-byte string", "0 layers"])
def test_a_model_llama_cpp_cannot_load_stops_the_cli_with_one_line(model_path, tmp_path, kind):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damaged(model_path("tiny").read_bytes(), kind))
    line = one_error_line(cli(f"--nn-preload=default:GGML:CPU:{bad}", "default", "chatml"))
    assert str(bad) in line and "cannot load" in line


def test_an_abort_loading_the_second_model_stops_the_cli_with_one_line(model_path, tmp_path):
    # The first model's engine had installed the abort handler, which parked the loading (main)
    # thread for good: the server hung, neither serving nor exiting. (Alone, it was killed: SIGABRT.)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(zero_layers(model_path("tiny").read_bytes()))
    line = one_error_line(cli(f"--nn-preload=good:GGML:CPU:{model_path('tiny')}", f"--nn-preload=bad:GGML:CPU:{bad}",
                              "--ctx-size", "1024", "good", "chatml", timeout=60))
    assert "'bad'" in line and "llama.cpp aborted" in line and "GGML_ASSERT" in line


@pytest.fixture(scope="module")
def nan_server(model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("nan")
    (folder / "chat.gguf").write_bytes(nan_weights(model_path("tiny")))
    (folder / "rank.gguf").write_bytes(nan_weights(model_path("rerank")))
    s = Server([f"--nn-preload=default:GGML:CPU:{folder / 'chat.gguf'}", f"--nn-preload=rank:GGML:CPU:{folder / 'rank.gguf'}",
                "--ctx-size", "256", "--parallel", "2", "default", "chatml"])
    yield s
    assert s.stop() == 0, s.output


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "logprobs": True}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4, "logprobs": 2}),
    ("/v1/completions", {"prompt": ["hi", "ho"], "max_tokens": 4, "logprobs": 2}),
    ("/completion", {"prompt": "hi", "n_predict": 4, "n_probs": 2}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/embedding", {"content": "hi"}),
    ("/rerank", {"model": "rank", "query": "q", "documents": ["a", "b"]}),
])
def test_a_model_that_computes_nan_is_a_clear_500_and_the_server_serves_on(nan_server, path, body):
    # NaN has no JSON spelling: the guest could not read the host's numbers (500 "RuntimeError"),
    # and /rerank's answer failed in Starlette (a plain-text 500)
    r = httpx.post(nan_server.url + path, json={"model": "default", **body}, timeout=60)
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "non_finite_output" and "NaN" in error["message"], error
    # without numbers that must be real, the text (whatever it is) is still an answer
    plain = httpx.post(nan_server.url + "/v1/completions", json={"model": "default", "prompt": "hi", "max_tokens": 2})
    assert plain.status_code == 200 and nan_server.healthy()


@pytest.mark.parametrize("args,words", [
    (["--parallel", "100000"], "at most 256"),
    (["--threads", "100000"], "at most 512"),
    (["--ctx-size", "1099511627776"], "tokens per sequence"),
    (["--ctx-size", str(1 << 28), "--parallel", "4"], "of memory available"),
])
def test_contexts_the_machine_cannot_hold_are_refused_with_the_limit(model_path, args, words):
    line = one_error_line(cli(f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", *args, "default", "chatml"))
    assert words in line and "'default'" in line


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (b"ctx-size: [unclosed", "not valid YAML"),
    (b"[" * 100_000, "nests too deeply"),
])
def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path, content, words):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert words in one_error_line(cli("--config", str(path)))


def _start_loading(model_path) -> subprocess.Popen:
    """A server started and past the line that says its model is loading."""
    proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "--socket-addr", "127.0.0.1:0",
                             f"--nn-preload=default:GGML:CPU:{model_path('small')}", "default", "chatml"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "loading default" in line:
            return proc
    raise AssertionError(f"the server never said it was loading (exit status {proc.wait()})")


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.3])
def test_sigterm_while_loading_exits_cleanly(model_path, delay):
    proc = _start_loading(model_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)  # while loading (exit 130), or after it (a server that stops: 0)
    rc = proc.wait(30)
    err = proc.stderr.read()
    assert rc in (0, 130), err
    assert ("llama-host: interrupted" in err) == (rc == 130), err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_signals_during_a_load_are_never_swallowed(model_path):
    # A signal handler that raises can land in llama.cpp's log callback, where ctypes swallows
    # the exception and the load goes on into a server nobody stops. A storm of signals lands
    # one there nearly every time.
    proc = _start_loading(model_path)
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        time.sleep(0.002)
    rc = proc.poll()
    if rc is None:
        proc.kill()
    err = proc.stderr.read()
    assert rc in (0, 130, -signal.SIGTERM), err  # (-SIGTERM: one that came as Python had reset its handlers to exit)
    assert "Traceback" not in err and "Exception ignored" not in err, err


# --- a live server ---------------------------------------------------------------------------

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--ctx-size", "8192", "--parallel", "4",
                "--timeout-head", str(TIMEOUT_S), "--timeout-body", str(TIMEOUT_S), "--timeout-keep-alive",
                str(TIMEOUT_S), "default", "chatml"])
    yield s
    assert s.stop() == 0, s.output
    assert "Traceback" not in s.output, s.output


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def wait_idle(server: Server, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while metric(server, "llama_host_busy_sequences") or metric(server, "llama_host_queue_depth"):
        assert time.monotonic() < deadline, "the engine still generates for clients that are gone"
        time.sleep(0.05)


def open_fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


LONG = {"model": "default", "prompt": "once", "max_tokens": 100_000, "ignore_eos": True}


def test_an_abandoned_non_streamed_request_stops_generating(server):
    before = metric(server, "llama_host_generated_tokens_total")

    def abandon(_):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json=LONG, timeout=1.5)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(abandon, range(4)))
    wait_idle(server, 5)
    stopped = metric(server, "llama_host_generated_tokens_total")
    time.sleep(1.0)
    assert metric(server, "llama_host_generated_tokens_total") == stopped  # nothing decodes for them
    # Each ran for about its client's 1.5 s, not to the end of its 8192-token context.
    assert stopped - before < 4 * 8000
    assert server.healthy()


def peak_rss(server: Server) -> int:
    """The server's peak resident memory so far, bytes (Linux VmHWM)."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/completion", {"prompt": "hi"}),
    ("/completion", {"prompt": "hi", "repeat_penalty": 1.0, "dry_multiplier": 0.8}),  # (DRY's window: the same)
])
def test_a_huge_penalty_window_allocates_no_more_than_the_context(server, path, body):
    # llama.cpp allocates the penalties' window up front: 2^31 - 1 tokens were 8 GiB per request.
    before = peak_rss(server)
    r = httpx.post(server.url + path, timeout=60, json={
        "model": "default", "max_tokens": 4, "n_predict": 4, "repeat_penalty": 1.3,
        "repeat_last_n": 2**31 - 1, "dry_penalty_last_n": 2**31 - 1, **body})
    assert r.status_code == 200, r.text
    assert peak_rss(server) - before < 256 << 20
    assert server.healthy()


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends before it closes the connection (fails if it stays open)."""
    sock.settimeout(seconds)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open ({data[:200]!r})")


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_an_idle_connection_is_closed(server):
    with _connect(server) as sock:
        assert _closed_within(sock, TIMEOUT_S + 3) == b""


def test_a_slowloris_head_gets_408_and_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            time.sleep(TIMEOUT_S / 3)
            try:
                sock.sendall(b"X")
            except OSError:
                break
        answer = _closed_within(sock, TIMEOUT_S + 3)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


def test_a_stalled_body_gets_408_and_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\":")
        answer = _closed_within(sock, TIMEOUT_S + 3)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body did not arrive" in answer
    assert server.healthy()


def test_an_idle_keep_alive_connection_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert _closed_within(sock, TIMEOUT_S + 3) == b""


def test_many_idle_and_slow_connections_leave_no_file_descriptors(server):
    baseline = open_fds(server)
    socks = [_connect(server) for _ in range(150)]
    for sock in socks[:30]:
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # slow: a head that never ends
    time.sleep(0.3)
    assert open_fds(server) >= baseline + 100  # the server does hold them meanwhile
    assert server.healthy()  # and still answers others
    for sock in socks:
        _closed_within(sock, TIMEOUT_S + 5)
        sock.close()
    deadline = time.monotonic() + 5
    while open_fds(server) > baseline + 2:
        assert time.monotonic() < deadline, f"{open_fds(server)} fds open, {baseline} before"
        time.sleep(0.1)


def test_errors_echo_a_bounded_part_of_what_the_client_sent(server):
    r = httpx.get(server.url + "/" + "x" * 60_000)
    assert r.status_code == 404 and len(r.content) < 1000


# --- shutdown --------------------------------------------------------------------------------


def test_sigterm_under_load_ends_every_stream_with_an_error_and_done(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--ctx-size", "16384", "--parallel", "6",
                "--shutdown-grace", "1", "default", "chatml"])

    def stream(_):
        lines = []
        with httpx.stream("POST", s.url + "/v1/completions", json={**LONG, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
        return lines

    with ThreadPoolExecutor(6) as pool:
        streams = [pool.submit(stream, i) for i in range(6)]
        deadline = time.monotonic() + 20
        while metric(s, "llama_host_busy_sequences") < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        # Refused once shutting down: the listener is closed.
        results = [f.result(timeout=30) for f in streams]
    assert s.proc.wait(30) == 0
    assert time.monotonic() - started < 10
    for lines in results:
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "unavailable" and "shutting down" in error["message"]
    output = s.log()
    assert "Traceback" not in output and "CancelledError" not in output


def test_requests_that_finish_within_the_grace_are_answered(model_path):
    # Long enough (a few seconds of the tiny model) to be seen decoding, short of the grace.
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--ctx-size", "4096", "--parallel", "2",
                "--shutdown-grace", "60", "default", "chatml"])  # (generous: a loaded CI machine is slow)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, s.url + "/v1/completions", timeout=60,
                              json={"model": "default", "prompt": "a", "max_tokens": 3000, "ignore_eos": True})
        # Signal only once the request is being decoded: before that, the closed listener refuses it.
        deadline = time.monotonic() + 20
        while metric(s, "llama_host_busy_sequences") < 1:
            assert time.monotonic() < deadline and not pending.done(), "the request was never seen decoding"
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        answer = pending.result(timeout=90)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3000
    assert s.proc.wait(90) == 0
