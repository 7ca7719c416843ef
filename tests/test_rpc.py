"""llama.cpp's RPC backend: two ``llama-host rpc-server`` workers on loopback hold a generated
model's layers, and llama-host serves it with ``--rpc`` as it serves it locally. A worker lost
mid-request fails that request with a 503 and turns /health to 503, never a hang or a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from live import Server
from llama_host.engine import devices

# (CI runs build.sh, which builds it: there a missing library is a failure, not a skip)
pytestmark = pytest.mark.skipif(not devices.RPC_LIBRARY.is_file() and not os.environ.get("CI"),
                                reason="llama.cpp's RPC backend is not built")

PROMPT = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "rpc-server", "--port", str(self.port),
                                      "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the RPC worker did not start: {self.proc.stderr.read()}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def workers():
    started = [Worker(), Worker()]
    yield started
    for w in started:
        w.stop()


def served_over(worker: Worker, model_path, *args: str) -> Server:
    """The ``small`` model served with all its layers on ``worker``."""
    return Server([f"--nn-preload=default:GGML:AUTO:{model_path('small')}", "--rpc", worker.endpoint, *args,
                   "default", "auto"])


def completion(server: Server, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json={**PROMPT, **body}, timeout=60)


def test_a_model_split_over_two_workers_answers_as_served_locally(model_path, workers):
    local = Server([f"--nn-preload=default:GGML:CPU:{model_path('small')}", "default", "auto"])
    try:
        want = completion(local).json()["choices"][0]["text"]
    finally:
        local.stop()
    split = Server([f"--nn-preload=default:GGML:AUTO:{model_path('small')}", "--rpc",
                    ",".join(w.endpoint for w in workers), "--tensor-split", "1,1", "default", "auto"])
    try:
        got = completion(split)
        assert got.status_code == 200, got.text
        assert got.json()["choices"][0]["text"] == want
        info = httpx.get(split.url + "/v1/info").json()
        rpc = [d for d in info["devices"] if d["name"].startswith("RPC")]
        assert [d["description"] for d in rpc] == [w.endpoint for w in workers]
        assert info["models"][0]["n_gpu_layers"] != 0  # (the layers went to the workers' devices)
    finally:
        assert split.stop() == 0, split.output


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_host.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value, status, words", [
    ("127.0.0.1", 2, "expected HOST:PORT"),
    ("127.0.0.1:99999", 2, "expected HOST:PORT"),
    ("[::1]:50052", 2, "IPv6"),
    (None, 1, "cannot use the RPC worker"),  # (nothing listens there)
])
def test_an_unusable_worker_is_a_clear_startup_error(model_path, value, status, words):
    value = value or f"127.0.0.1:{free_port()}"
    r = run_cli("--nn-preload", f"default:GGML:AUTO:{model_path('tiny')}", "--rpc", value, "--port", "0", "default")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status and lines[-1].startswith("llama-host: error:") and words in lines[-1], r.stderr


def test_a_worker_that_is_not_rpc_server_is_refused(model_path):
    """Something else listens there (an HTTP server): llama.cpp's handshake fails in the check."""
    other = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "default"])
    try:
        r = run_cli("--nn-preload", f"default:GGML:AUTO:{model_path('tiny')}", "--rpc", f"127.0.0.1:{other.port}",
                    "--port", "0", "default")
        assert r.returncode == 1 and "cannot use the RPC worker" in r.stderr, r.stderr
    finally:
        other.stop()


@pytest.mark.parametrize("split", ["a,b", "-1,1", "0,0"])
def test_bad_tensor_split_is_a_usage_error(split):
    r = run_cli("--tensor-split", split)
    assert r.returncode == 2 and "--tensor-split" in r.stderr, r.stderr


def test_a_worker_lost_mid_request_fails_it_with_a_503_and_health_says_so(model_path):
    worker = Worker()
    server = served_over(worker, model_path)
    try:
        assert completion(server).status_code == 200
        answers: list[httpx.Response] = []
        running = threading.Thread(target=lambda: answers.append(completion(server, max_tokens=4000, ignore_eos=True)))
        started = time.monotonic()
        running.start()
        time.sleep(1.0)  # (decoding, on the worker)
        worker.stop()
        running.join(60)
        assert not running.is_alive(), "the request hung after its worker was lost"
        [answer] = answers
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "engine_failed", answer.text
        assert time.monotonic() - started < 30
        health = httpx.get(server.url + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_failed"
        again = completion(server)  # refused at once, not queued behind a parked thread
        assert again.status_code == 503 and "restart" in again.json()["error"]["message"]
        assert httpx.get(server.url + "/v1/models", timeout=5).status_code == 200  # the server itself serves on
    finally:
        worker.stop()
        assert server.stop() == 0, server.output
    assert "llama.cpp aborted" in server.output


def test_a_worker_that_stops_answering_turns_health_to_503_until_it_answers_again(model_path):
    # A network partition: the connection stays open and llama.cpp waits on it without a timeout.
    worker = Worker()
    server = served_over(worker, model_path, "--stall-timeout", "1")
    try:
        assert completion(server).status_code == 200 and server.healthy()
        answers: list[httpx.Response] = []
        running = threading.Thread(target=lambda: answers.append(completion(server, max_tokens=200, ignore_eos=True)))
        running.start()
        time.sleep(0.5)  # (decoding, on the worker)
        worker.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 20
        while (health := httpx.get(server.url + "/health", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "/health stayed 200 while a decode step waited on a silent worker"
            time.sleep(0.2)
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_stalled", health.text
        assert "--stall-timeout" in health.json()["error"]["message"]
        worker.proc.send_signal(signal.SIGCONT)
        running.join(60)
        assert not running.is_alive() and answers[0].status_code == 200, answers
        assert server.healthy()
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stop()
        assert server.stop() == 0, server.output


def test_a_server_whose_worker_is_gone_still_shuts_down(model_path):
    # Freeing the model's memory on the lost worker made llama.cpp abort on one of its own threads
    # during shutdown: the shutdown waited for it forever (killed after 30 s).
    worker = Worker()
    server = served_over(worker, model_path)
    try:
        assert completion(server).status_code == 200
    finally:
        worker.stop()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    server.stop()
    assert "what it held is leaked" in server.output
