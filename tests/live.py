"""A live `llama-host` server for end-to-end tests: started as a subprocess on an ephemeral port,
healthy before the test drives it, stopped with SIGTERM (its output kept for assertions)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import openai


class Server:
    def __init__(self, args: list[str], env: dict | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a server that logs much would block on a full pipe nobody reads.
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_host.cli", "--socket-addr", f"127.0.0.1:{self.port}", "--log-level", "warning",
             *args],
            env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not become healthy")
            time.sleep(0.1)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def healthy(self) -> bool:
        return httpx.get(self.url + "/health").status_code == 200

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output = self.log()
        return self.proc.returncode

    def log(self) -> str:
        """Everything the server has written so far."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")
