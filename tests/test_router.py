"""Many models in one server (--models-dir): on-demand loading, LRU and idle unloading, the
memory budget, llama-server's router endpoints, against live servers."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hostile_ggufs import infinite_layers, zero_layers
from live import Server
from llama_host import modelgen
from llama_host.api import Llama
from llama_host.engine import EngineConfig, Target
from llama_host.errors import ModelBusy, ModelNotFound
from llama_host.models_dir import ModelFile
from llama_host.registry import Limits, ModelRegistry, ModelState

ARGS = ["--ctx-size", "256", "--parallel", "4", "--batch-size", "64"]
PROMPT = "the model said"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, model_path):
    """Three tiny models with different weights, a split model's parts, a model too large for
    the budget below, a corrupt GGUF, a file that is no GGUF at all, and a file that is skipped."""
    folder = tmp_path_factory.mktemp("models")
    for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3), ("multi-00001-of-00002", 4)):
        (folder / f"{name}.gguf").symlink_to(modelgen.build("tiny", seed=seed))
    (folder / "multi-00002-of-00002.gguf").write_bytes(b"GGUF")  # (never read: the first part holds it all)
    (folder / "large.gguf").symlink_to(model_path("small", "q8_0"))
    (folder / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4)
    (folder / "junk.gguf").write_text("not a model")
    (folder / "asserts.gguf").write_bytes(zero_layers(model_path("tiny").read_bytes()))  # llama.cpp aborts
    (folder / "infinite.gguf").write_bytes(infinite_layers(model_path("tiny").read_bytes()))  # (int(inf): a raw 500)
    (folder / "notes.txt").write_text("skipped")
    # Names no model id can be: not UTF-8 (lone surrogates in Python, which broke every JSON
    # answer that lists the models), and a control character. Skipped, with a warning.
    (folder / "bad-\udcff.gguf").symlink_to(modelgen.build("tiny", seed=5))
    (folder / "bell\x07.gguf").symlink_to(modelgen.build("tiny", seed=5))
    return folder


@pytest.fixture(scope="module")
def server(models_dir):
    s = Server(["--models-dir", str(models_dir), "--models-max", "1", "--models-max-memory", "16", *ARGS])
    yield s
    assert s.stop() == 0, s.output


def statuses(server) -> dict[str, dict]:
    return {m["id"]: m["status"] for m in httpx.get(server.url + "/v1/models").json()["data"]}


def complete(server, model: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", timeout=60,
                      json={"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0})


def alone(path) -> str:
    """The oracle: what the model answers when it is the only one, in-process."""
    with Llama(str(path), n_ctx=256, n_batch=64, n_parallel=4, verbose=False) as llm:
        return llm.create_completion(PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]


def loads(server, model: str) -> int:
    found = re.search(rf'^llama_host_model_loads_total{{model="{model}"}} (\S+)$',
                      httpx.get(server.url + "/metrics").text, re.M)
    return int(float(found.group(1)))


def test_every_gguf_file_is_listed_unloaded(server):
    listed = statuses(server)
    assert sorted(listed) == ["alpha", "asserts", "beta", "broken", "gamma", "infinite", "junk", "large", "multi"]
    assert all(s["value"] == "unloaded" for s in listed.values())
    assert httpx.get(server.url + "/v1/info").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert "skipping 'bad-\\udcff.gguf'" in server.log()
    one = httpx.get(server.url + "/v1/models/alpha").json()
    assert one["id"] == "alpha" and one["status"]["value"] in ("unloaded", "loaded")


def test_alternating_models_answer_as_each_alone(server, models_dir):
    expected = {m: alone(models_dir / f"{m}.gguf") for m in ("alpha", "beta")}
    assert expected["alpha"] != expected["beta"]  # (else the test could not tell them apart)
    before = loads(server, "alpha")
    for model in ("alpha", "beta") * 2:
        r = complete(server, model)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected[model]
        loaded = [m for m, s in statuses(server).items() if s["value"] == "loaded"]
        assert loaded == [model]  # --models-max 1: the other was unloaded to make room
    assert loads(server, "alpha") == before + 2


def test_concurrent_first_requests_load_the_model_once(server):
    assert statuses(server)["gamma"]["value"] == "unloaded"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: complete(server, "gamma"), range(4)))
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert len({r.json()["choices"][0]["text"] for r in answers}) == 1
    assert loads(server, "gamma") == 1


def test_a_split_model_is_named_without_its_suffix(server):
    r = complete(server, "multi")
    assert r.status_code == 200, r.text
    assert statuses(server)["multi"]["value"] == "loaded"


def test_load_and_unload_endpoints(server):
    r = httpx.post(server.url + "/models/load", json={"model": "beta"}, timeout=60)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert statuses(server)["beta"] == {"value": "loaded"}
    r = httpx.post(server.url + "/models/unload", json={"model": "beta"})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert statuses(server)["beta"] == {"value": "unloaded"}
    for path in ("/models/load", "/models/unload"):
        r = httpx.post(server.url + path, json={"model": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        r = httpx.post(server.url + path, json={})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_an_unknown_model_is_a_404_in_openai_shape(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error" and error["param"] == "model"
    assert httpx.get(server.url + "/v1/models/nope").status_code == 404


@pytest.mark.parametrize("model", ["broken", "junk", "infinite"])
def test_a_file_that_does_not_load_fails_clearly_and_the_others_serve(server, model):
    for _ in range(2):  # (the second request tries again, and fails the same way)
        r = complete(server, model)
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["code"] == "model_load_failed" and f"{model}.gguf" in error["message"]
        # the endpoints that load a model without the guest answer the same
        for other in (httpx.get(server.url + "/props", params={"model": model}),
                      httpx.post(server.url + "/tokenize", json={"model": model, "content": "a"}),
                      httpx.post(server.url + "/models/load", json={"model": model})):
            assert other.status_code == 500 and other.json()["error"]["code"] == "model_load_failed", other.text
    status = statuses(server)[model]
    assert status["value"] == "unloaded" and status["failed"] is True and f"{model}.gguf" in status["error"]
    assert complete(server, "alpha").status_code == 200


def test_a_model_llama_cpp_aborts_on_fails_clearly_once_and_the_others_serve(server):
    # The abort parked the loading thread with the load unfinished: the model stayed "loading" and
    # every request for it waited forever (and before any engine existed, it killed the process).
    for _ in range(2):  # (the second is refused at once: what the abort left half-made stays held)
        r = complete(server, "asserts")
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["code"] == "model_load_failed" and "llama.cpp aborted" in error["message"], error
        assert "GGML_ASSERT" in error["message"] and "restart" in error["message"]
    assert statuses(server)["asserts"]["value"] == "unloaded"
    assert complete(server, "alpha").status_code == 200
    assert server.healthy()


def test_a_model_past_the_memory_budget_is_refused(server):
    r = complete(server, "large")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert error["code"] == "insufficient_memory" and "--models-max-memory 16 MiB" in error["message"]
    assert statuses(server)["large"]["value"] == "unloaded"
    r = httpx.post(server.url + "/models/load", json={"model": "large"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "insufficient_memory"
    assert complete(server, "beta").status_code == 200


@pytest.mark.parametrize("args,words", [(["--models-dir", "/nonexistent"], "is not a folder"),
                                        (["--models-dir", "{empty}"], "has no .gguf file"),
                                        (["--models-dir", "{models}", "nope"], "names no --nn-preload or --models-dir")])
def test_models_dir_errors_are_one_line(args, words, models_dir, tmp_path):
    args = [a.format(empty=tmp_path, models=models_dir) for a in args]
    r = subprocess.run([sys.executable, "-m", "llama_host.cli", *args], capture_output=True, text=True, timeout=60)
    last = r.stderr.strip().splitlines()[-1]  # (after the scan's log lines)
    assert r.returncode == 2 and last.startswith("llama-host: error:") and words in last, r.stderr


# --- keep-alive and preloads ------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_keep_alive_unloads_an_idle_model_and_frees_its_memory(model_path, tmp_path):
    (tmp_path / "big.gguf").symlink_to(model_path("small", "q8_0"))  # 38 MB of weights
    s = Server([f"--nn-preload=pinned:GGML:CPU:{model_path('tiny')}", "--models-dir", str(tmp_path),
                "--keep-alive", "1", *ARGS, "pinned"])
    try:
        assert statuses(s) == {"pinned": {"value": "loaded", "preloaded": True}, "big": {"value": "unloaded"}}
        r = httpx.post(s.url + "/models/unload", json={"model": "pinned"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_preloaded"
        before = rss_bytes(s.proc.pid)
        assert complete(s, "big").status_code == 200
        loaded = rss_bytes(s.proc.pid)
        deadline = time.monotonic() + 20
        while statuses(s)["big"]["value"] != "unloaded":
            assert time.monotonic() < deadline, "the idle model was not unloaded"
            time.sleep(0.2)
        after = rss_bytes(s.proc.pid)
        assert loaded - before > 20 << 20 and loaded - after > 20 << 20, (before, loaded, after)
        assert complete(s, "pinned").status_code == 200 and statuses(s)["pinned"]["value"] == "loaded"
        assert complete(s, "big").status_code == 200  # (loaded again on demand)
    finally:
        assert s.stop() == 0, s.output


# --- the registry's rules, in-process -----------------------------------------------------------


@pytest.fixture
def registry_of(models_dir):
    made = []

    def make(**limits) -> ModelRegistry:
        files = [ModelFile(name, models_dir / f"{name}.gguf", Target.CPU) for name in ("alpha", "beta")]
        registry = ModelRegistry(on_demand=files, config=EngineConfig(ctx_size=128, parallel=1), limits=Limits(**limits))
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def test_a_model_in_use_is_never_unloaded_for_another(registry_of):
    registry = registry_of(max_loaded=1, wait=0.3)
    with registry.use("alpha"):
        with pytest.raises(ModelBusy):
            registry.acquire("beta")  # (alpha is busy: no room within the wait)
        with pytest.raises(ModelBusy):
            registry.unload("alpha")
        assert registry.statuses()["alpha"].state is ModelState.LOADED
    with registry.use("beta"):  # alpha is idle now: unloaded to make room
        assert {n: s.state for n, s in registry.statuses().items()} == {"alpha": ModelState.UNLOADED,
                                                                         "beta": ModelState.LOADED}


def test_first_requests_for_two_models_share_one_place_in_turn(registry_of):
    registry = registry_of(max_loaded=1, wait=30)

    def use(name: str) -> str:
        with registry.use(name) as served:
            time.sleep(0.2)
            return served.name

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(use, ["alpha", "beta", "alpha", "beta"])) == ["alpha", "beta", "alpha", "beta"]
    assert sum(s.state is ModelState.LOADED for s in registry.statuses().values()) == 1


def test_keep_alive_zero_unloads_when_the_last_use_ends(registry_of):
    registry = registry_of(keep_alive=0)
    outer = registry.acquire("alpha")
    with registry.use("alpha"):
        pass
    assert registry.statuses()["alpha"].state is ModelState.LOADED  # (still in use by the outer lease)
    outer.release()
    outer.release()  # (idempotent)
    assert registry.statuses()["alpha"].state is ModelState.UNLOADED
    with pytest.raises(ModelNotFound):
        registry.acquire("nope")
