"""Models from a hub (hub.py, -hf, hf://, pull, list) against a test double of the Hugging Face hub.

The double is a real HTTP server on 127.0.0.1 that answers the requests huggingface_hub 2.4 makes
for a download (the model info with file metadata, HEAD and GET of /resolve/, Range for a resumed
one), so the real client runs end to end; the real hub is never contacted: in-process calls pass
the double's ``endpoint``, subprocesses get ``HF_ENDPOINT`` (which huggingface_hub reads at import).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from llama_host import hub
from live import Server

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclasses.dataclass
class Repo:
    files: dict[str, bytes]
    corrupt: set[str] = dataclasses.field(default_factory=set)  # served with a byte changed
    drop_after: dict[str, int] = dataclasses.field(default_factory=dict)  # first GET cut off after N bytes


class HubDouble:
    """The few endpoints of the hub that huggingface_hub calls to download a file."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.lock = threading.Lock()
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
                pass

            def do_GET(self) -> None:
                double.answer(self, head=False)

            def do_HEAD(self) -> None:
                double.answer(self, head=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, repo_id: str) -> list[tuple[str, str, dict[str, str]]]:
        with self.lock:
            return [r for r in self.requests if f"/{repo_id}/" in unquote(r[1]) + "/"]

    def answer(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        path = urlsplit(h.path).path
        with self.lock:
            self.requests.append((h.command, h.path, dict(h.headers)))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self.info(h, unquote(m[1]), unquote(m[2] or "main"))
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.resolve(h, unquote(m[1]), unquote(m[2]), unquote(m[3]), head)
        self.send(h, 404, b"not a hub route", {"X-Error-Code": "EntryNotFound"})

    def _repo(self, h, repo_id: str, revision: str) -> Repo | None:  # noqa: ANN001
        repo = self.repos.get(repo_id)
        if repo is None:
            self.send(h, 404, b'{"error":"Repository not found"}',
                      {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        elif revision not in ("main", COMMIT):
            self.send(h, 404, b'{"error":"Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    def info(self, h, repo_id: str, revision: str) -> None:  # noqa: ANN001
        if (repo := self._repo(h, repo_id, revision)) is None:
            return
        siblings = [{"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest(),
                     "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}}
                    for name, data in repo.files.items()]
        body = json.dumps({"id": repo_id, "sha": COMMIT, "siblings": siblings}).encode()
        self.send(h, 200, body, {"Content-Type": "application/json"})

    def resolve(self, h, repo_id: str, revision: str, name: str, head: bool) -> None:  # noqa: ANN001
        if (repo := self._repo(h, repo_id, revision)) is None:
            return
        if name not in repo.files:
            return self.send(h, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = repo.files[name]
        sha = hashlib.sha256(data).hexdigest()
        if name in repo.corrupt:
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                   "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, start = 200, 0
        if (rng := h.headers.get("Range")) and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cut = None if head else repo.drop_after.pop(name, None)
        self.send(h, status, b"" if head else body, headers, length=len(body), cut=cut)

    @staticmethod
    def send(h, status: int, body: bytes, headers: dict[str, str], length: int | None = None,  # noqa: ANN001
             cut: int | None = None) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if cut is not None:  # a connection lost mid-file
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if h.command != "HEAD":
            h.wfile.write(body)


@pytest.fixture(scope="module")
def double():
    d = HubDouble()
    yield d
    d.close()


@pytest.fixture(scope="module")
def tiny(model_path) -> bytes:
    return model_path("tiny").read_bytes()


@pytest.fixture(scope="module")
def tiny8(model_path) -> bytes:  # another model: different bytes, as a second quantization would be
    from llama_host import modelgen

    return modelgen.build("tiny", seed=1).read_bytes()


def fetch(double: HubDouble, cache: Path, text: str, file: str | None = None, **kw) -> Path:
    return hub.resolve(hub.parse_repo(text, file), endpoint=double.url, cache_dir=cache, **kw)


def leftovers(cache: Path) -> list[str]:
    """Every file left in the cache's blobs/ and snapshots/ (a .incomplete one too)."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if (p.is_file() or p.is_symlink()) and ("blobs" in p.parts or "snapshots" in p.parts))


# --- choosing a file ------------------------------------------------------------------------------

FILES = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-Q8_0.gguf",
         "big/m-Q6_K-00001-of-00002.gguf", "big/m-Q6_K-00002-of-00002.gguf"]


@pytest.mark.parametrize(("text", "file", "chosen"), [
    ("u/r", None, ["m-Q4_K_M.gguf"]),
    ("u/r:Q8_0", None, ["m-Q8_0.gguf"]),  # not the projector, which has the tag too
    ("u/r:q8_0", None, ["m-Q8_0.gguf"]),  # case-insensitive
    ("u/r:Q6_K", None, ["big/m-Q6_K-00001-of-00002.gguf", "big/m-Q6_K-00002-of-00002.gguf"]),
    ("u/r", "big/m-Q6_K-00002-of-00002.gguf", ["big/m-Q6_K-00001-of-00002.gguf", "big/m-Q6_K-00002-of-00002.gguf"]),
    ("u/r", "m-Q8_0.gguf", ["m-Q8_0.gguf"]),
])
def test_choose_by_quant_as_llama_server(text, file, chosen):
    assert hub.choose(FILES, hub.parse_repo(text, file)) == chosen


def test_choose_without_q4_k_m_takes_q8_0_then_the_first_gguf():
    assert hub.choose(["a-F16.gguf", "b-Q8_0.gguf"], hub.Spec("u/r")) == ["b-Q8_0.gguf"]
    assert hub.choose(["b-F16.gguf", "a-Q2_K.gguf", "mmproj-a.gguf"], hub.Spec("u/r")) == ["a-Q2_K.gguf"]
    # what is cached stands in for the hub only as a first choice
    with pytest.raises(hub.FileNotFound):
        hub.choose(["b-Q8_0.gguf"], hub.Spec("u/r"), partial=True)


def test_missing_quant_or_file_lists_what_is_there():
    with pytest.raises(hub.FileNotFound, match=r"no Q5_K_M GGUF; quantizations there: Q4_K_M, Q6_K, Q8_0$"):
        hub.choose(FILES, hub.parse_repo("u/r:Q5_K_M"))
    with pytest.raises(hub.FileNotFound, match=r"no file 'x.gguf'"):
        hub.choose(FILES, hub.parse_repo("u/r", "x.gguf"))
    with pytest.raises(hub.FileNotFound, match="holds no GGUF file"):
        hub.choose(["README.md"], hub.Spec("u/r"))
    with pytest.raises(hub.FileNotFound, match="not all there"):
        hub.choose(["m-Q4_K_M-00001-of-00003.gguf", "m-Q4_K_M-00003-of-00003.gguf"], hub.Spec("u/r"))


@pytest.mark.parametrize("text", ["norepo", "a/b/c", "u/r:Q4-K", "u/r@:Q8_0", "u/-bad-", ""])
def test_bad_repo_specs(text):
    with pytest.raises(hub.SpecError):
        hub.parse_repo(text)


def test_uris():
    assert hub.parse_uri("hf://u/r/sub/m.gguf") == hub.Spec("u/r", "main", None, "sub/m.gguf")
    assert hub.parse_uri("hf://u/r@v2/m.gguf") == hub.Spec("u/r", "v2", None, "m.gguf")
    assert hub.parse_uri("hf://u/r") == hub.Spec("u/r")  # no file: by quantization
    for bad in ("hf://u", "hf://datasets/u/r/m.gguf", "hf://u/r@/m.gguf"):
        with pytest.raises(hub.SpecError):
            hub.parse_uri(bad)


# --- downloading ----------------------------------------------------------------------------------

def test_download_then_the_cache_answers_without_a_request(double, tmp_path, tiny, tiny8):
    double.repos["t/fresh"] = Repo({"m-Q4_K_M.gguf": tiny, "m-Q8_0.gguf": tiny8})
    path = fetch(double, tmp_path, "t/fresh")
    assert path.name == "m-Q4_K_M.gguf" and path.read_bytes() == tiny
    assert tmp_path in path.parents and "snapshots" in path.parts
    methods = [(m, urlsplit(p).path) for m, p, _ in double.seen("t/fresh")]
    assert methods == [("GET", "/api/models/t/fresh/revision/main"), ("HEAD", "/t/fresh/resolve/main/m-Q4_K_M.gguf"),
                       ("GET", "/t/fresh/resolve/main/m-Q4_K_M.gguf")]
    n = len(double.seen("t/fresh"))
    assert fetch(double, tmp_path, "t/fresh") == path
    assert fetch(double, tmp_path, "t/fresh", offline=True) == path
    assert fetch(double, tmp_path, "t/fresh", "m-Q4_K_M.gguf") == path
    assert len(double.seen("t/fresh")) == n  # no request at all
    # :Q8_0 is not cached yet: downloaded; then cached too
    assert fetch(double, tmp_path, "t/fresh:Q8_0").read_bytes() == tiny8
    n = len(double.seen("t/fresh"))
    assert fetch(double, tmp_path, "t/fresh:q8_0").name == "m-Q8_0.gguf" and len(double.seen("t/fresh")) == n
    # refresh (pull) asks the hub, and downloads nothing it has
    assert fetch(double, tmp_path, "t/fresh", refresh=True) == path
    assert [m for m, _, _ in double.seen("t/fresh")[n:]] == ["GET", "HEAD"]


def test_a_dropped_download_is_resumed_with_a_range_request(double, tmp_path):
    # past huggingface_hub's 10 MiB write chunk, so some of it is on disk when the connection drops
    data = b"GGUF" + random.Random(1).randbytes(24 << 20)
    double.repos["t/resume"] = Repo({"big-Q4_K_M.gguf": data}, drop_after={"big-Q4_K_M.gguf": 15 << 20})
    path = fetch(double, tmp_path, "t/resume")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    gets = [hdrs for m, p, hdrs in double.seen("t/resume") if m == "GET" and "/resolve/" in p]
    assert len(gets) == 2 and "Range" not in gets[0] and gets[1]["Range"] == f"bytes={10 << 20}-"
    assert not list(tmp_path.rglob("*.incomplete"))


def test_a_split_model_downloads_every_part(double, tmp_path, tiny):
    parts = {"s/m-Q4_K_M-00001-of-00002.gguf": tiny[:300_000], "s/m-Q4_K_M-00002-of-00002.gguf": b"GGUF" + tiny[300_000:]}
    double.repos["t/split"] = Repo({**parts, "m-Q8_0.gguf": tiny})
    path = fetch(double, tmp_path, "t/split")
    assert path.name == "m-Q4_K_M-00001-of-00002.gguf"
    for name, data in parts.items():
        assert (path.parent.parent / name).read_bytes() == data
    n = len(double.seen("t/split"))
    assert fetch(double, tmp_path, "t/split") == path and len(double.seen("t/split")) == n


def test_missing_repo_revision_and_file_are_typed_errors(double, tmp_path, tiny):
    double.repos["t/there"] = Repo({"m-Q4_K_M.gguf": tiny})
    with pytest.raises(hub.RepoNotFound, match=r"^repository t/nothere not found on http://127\.0\.0\.1:\d+ "):
        fetch(double, tmp_path, "t/nothere")
    with pytest.raises(hub.FileNotFound, match=r"^t/there has no file 'x\.gguf'; quantizations there: Q4_K_M$"):
        fetch(double, tmp_path, "t/there", "x.gguf")
    with pytest.raises(hub.FileNotFound, match=r"^t/there has no Q8_0 GGUF; quantizations there: Q4_K_M$"):
        fetch(double, tmp_path, "t/there:Q8_0")
    with pytest.raises(hub.FileNotFound, match="no revision 'v9'"):
        fetch(double, tmp_path, "t/there@v9")
    with pytest.raises(hub.FileNotFound, match="no file"):  # hf:// names a file the listing is not asked for
        hub.resolve(hub.parse_uri("hf://t/there/gone.gguf"), endpoint=double.url, cache_dir=tmp_path)
    assert not leftovers(tmp_path)


def test_a_corrupt_download_is_deleted(double, tmp_path, tiny):
    double.repos["t/corrupt"] = Repo({"m-Q4_K_M.gguf": tiny}, corrupt={"m-Q4_K_M.gguf"})
    with pytest.raises(hub.ChecksumMismatch, match="corrupt .* deleted"):
        fetch(double, tmp_path, "t/corrupt")
    assert not leftovers(tmp_path)
    double.repos["t/corrupt"].corrupt.clear()  # the next try downloads it anew
    assert fetch(double, tmp_path, "t/corrupt").read_bytes() == tiny


def test_offline_with_nothing_cached(double, tmp_path):
    double.repos["t/offline"] = Repo({"m-Q4_K_M.gguf": b"GGUF"})
    with pytest.raises(hub.NotCached, match="not in the cache .* HF_HUB_OFFLINE is set"):
        fetch(double, tmp_path, "t/offline", offline=True)
    assert not double.seen("t/offline")


def test_an_unreachable_hub(tmp_path, double, tiny, tiny8):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    with pytest.raises(hub.HubUnreachable, match="cannot reach the hub at http://127.0.0.1"):
        hub.resolve(hub.parse_repo("t/any"), endpoint=dead, cache_dir=tmp_path)
    # a cached model that is not a first choice (Q8_0 for the default) is used when the hub is down
    double.repos["t/fallback"] = Repo({"m-Q8_0.gguf": tiny8})
    path = fetch(double, tmp_path, "t/fallback")
    assert hub.resolve(hub.parse_repo("t/fallback"), endpoint=dead, cache_dir=tmp_path) == path


@pytest.mark.filterwarnings("ignore:Not enough free disk space")  # (huggingface_hub's, before it tries)
def test_a_full_disk_leaves_nothing_that_looks_complete(double, tmp_path, tiny):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        double.repos["t/full"] = Repo({"m-Q4_K_M.gguf": tiny})  # 600 kB
        with pytest.raises(hub.DiskFull, match=f"no space left in {small}"):
            fetch(double, small, "t/full")
        assert not leftovers(small) and not list(small.rglob("*.incomplete"))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_progress_is_logged_per_tenth_without_a_terminal(double, tmp_path, caplog):
    double.repos["t/progress"] = Repo({"m-Q4_K_M.gguf": b"GGUF" + bytes(4 << 20)})
    caplog.set_level(logging.INFO, logger="llama_host.hub")
    fetch(double, tmp_path, "t/progress")
    lines = [r.getMessage() for r in caplog.records if "%" in r.getMessage()]
    assert lines and lines[-1].endswith("100% of 4.2 MB"), lines
    bar = hub.LogProgress(total=1000, desc="x")
    caplog.clear()
    for _ in range(20):
        bar.update(50)
    assert [r.getMessage() for r in caplog.records] == [f"x: {p}% of 0.0 MB" for p in range(10, 101, 10)]


def test_disk_errors_keep_their_kind():
    spec = hub.Spec("u/r")
    with pytest.raises(hub.DiskFull):
        with hub._errors(spec, None, "m.gguf"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(hub.HubError, match="^downloading u/r/m.gguf failed: Consistency check failed"):
        with hub._errors(spec, None, "m.gguf"):
            raise OSError("Consistency check failed: file should be of size 3 but has size 2\nretry")


# --- the command line -----------------------------------------------------------------------------

@pytest.fixture
def hf_env(double, tmp_path) -> dict[str, str]:
    home = tmp_path / "hf-home"
    return {"HF_ENDPOINT": double.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_host.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_pull_and_list(double, hf_env, tiny, tiny8):
    double.repos["cli/tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": tiny, "tiny-Q8_0.gguf": tiny8, "README.md": b"hi"})
    r = cli(["list"], hf_env)
    assert r.returncode == 0 and r.stdout.startswith("no GGUF files in "), r.stderr
    r = cli(["pull", "cli/tiny-GGUF"], hf_env)
    assert r.returncode == 0, r.stderr
    q4 = Path(r.stdout.strip())
    assert q4.name == "tiny-Q4_K_M.gguf" and q4.read_bytes() == tiny and Path(hf_env["HF_HUB_CACHE"]) in q4.parents
    assert "100%" in r.stderr  # progress lines: stderr is not a terminal here
    r = cli(["pull", "cli/tiny-GGUF", "--hf-file", "tiny-Q8_0.gguf"], hf_env)
    assert r.returncode == 0 and Path(r.stdout.strip()).read_bytes() == tiny8, r.stderr
    r = cli(["list"], hf_env)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["REPO", "FILE", "SIZE", "PATH"]
    assert [row.split()[:2] for row in rows] == [["cli/tiny-GGUF", "tiny-Q4_K_M.gguf"], ["cli/tiny-GGUF", "tiny-Q8_0.gguf"]]
    assert rows[0].split()[2:] == ["614.9", "kB", str(q4)]
    # offline, the cache answers; what it lacks is a one-line error, exit status 1
    offline = {**hf_env, "HF_HUB_OFFLINE": "1"}
    n = len(double.seen("cli/tiny-GGUF"))
    r = cli(["pull", "cli/tiny-GGUF"], offline)
    assert r.returncode == 0 and Path(r.stdout.strip()) == q4, r.stderr
    r = cli(["pull", "cli/other-GGUF"], offline)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"llama-host: error: cli/other-GGUF is not in the cache ({hf_env['HF_HUB_CACHE']}) and HF_HUB_OFFLINE is set: "
        "run 'llama-host pull cli/other-GGUF' with a network first"]
    assert len(double.seen("cli/tiny-GGUF")) == n


def test_cli_errors(double, hf_env):
    for args, status, words in ((["pull", "cli/missing"], 1, "repository cli/missing not found"),
                                (["-hf", "cli/missing"], 1, "repository cli/missing not found"),
                                (["pull", "not-a-repo"], 2, "expected user/repo[:QUANT]"),
                                (["-hf", "u/r:Q4-K"], 2, "the quantization 'Q4-K'"),
                                (["--hf-file", "m.gguf"], 2, "--hf-file needs -hf"),
                                (["--nn-preload", "m:GGML:AUTO:hf://cli/missing/m.gguf"], 1, "repository cli/missing"),
                                (["--nn-preload", "m:GGML:AUTO:hf://nope"], 2, "expected hf://user/repo")):
        r = cli(args, hf_env)
        assert r.returncode == status and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_serve_with_hf_and_hf_uri(double, hf_env, tiny, tiny8):
    double.repos["e2e/tiny-GGUF"] = Repo({"tiny-Q4_K_M.gguf": tiny, "tiny-Q8_0.gguf": tiny8})
    s = Server(["-hf", "e2e/tiny-GGUF", "--nn-preload", "eight:GGML:CPU:hf://e2e/tiny-GGUF/tiny-Q8_0.gguf",
                "--ctx-size", "256", "--parallel", "1"], env=hf_env)
    try:
        client = s.client()
        assert sorted(m.id for m in client.models.list().data) == ["default", "eight"]
        for model in ("default", "eight"):
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 3
    finally:
        assert s.stop() == 0
    # a second start finds both in the cache and asks the hub nothing
    n = len(double.seen("e2e/tiny-GGUF"))
    s = Server(["-hf", "e2e/tiny-GGUF:Q8_0", "--ctx-size", "256", "--parallel", "1"], env=hf_env)
    try:
        assert [m.id for m in s.client().models.list().data] == ["default"]
    finally:
        s.stop()
    assert len(double.seen("e2e/tiny-GGUF")) == n


def test_llm_api_config_with_repo_id(double, hf_env, tiny, tmp_path):
    double.repos["cfg/tiny-GGUF"] = Repo({"tiny.Q4_K_M.gguf": tiny})
    (tmp_path / "config.yaml").write_text(
        f"models_dir: {tmp_path / 'models'}\nmodel_family: llama\nmodel_name: cfg-tiny\n"
        "setup_params:\n  repo_id: cfg/tiny-GGUF\n  filename: tiny.Q4_K_M.gguf\n"
        "model_params:\n  ctx_size: 256\n")
    s = Server(["--config", str(tmp_path / "config.yaml"), "--parallel", "1"], env=hf_env)
    try:
        client = s.client()
        assert [m.id for m in client.models.list().data] == ["cfg-tiny"]
        r = client.chat.completions.create(model="cfg-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.usage.completion_tokens <= 2
    finally:
        s.stop()
    assert list(Path(hf_env["HF_HUB_CACHE"]).rglob("tiny.Q4_K_M.gguf"))  # in the hub's cache, not models_dir
