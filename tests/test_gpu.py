"""On a GPU (a CUDA, Metal or Vulkan build of llama.cpp with a device present; bench/gpu.sh runs
these with ``pytest -m gpu``): a GPU preload offloads every layer to the device, serves the same
API, and a CPU preload of the same file beside it stays on the CPU. Skipped elsewhere."""

from __future__ import annotations

import httpx
import pytest

from live import Server
from llama_host.engine import devices, lib

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not lib.supports_gpu_offload() or not any(d.kind == "gpu" for d in devices.devices()),
                       reason="no GPU: llama.cpp was built without a GPU backend, or no device is present"),
]

BODY = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(model_path):
    path = model_path("small")
    s = Server([f"--nn-preload=gpu:GGML:GPU:{path}", f"--nn-preload=cpu:GGML:CPU:{path}", "--parallel", "4", "gpu",
                "auto"])
    yield s
    assert s.stop() == 0, s.output


def test_a_gpu_preload_offloads_every_layer_and_a_cpu_one_none(server, model_path):
    info = httpx.get(server.url + "/v1/info").json()
    assert any(d["type"] == "gpu" and d["used_by_models_bytes"] for d in info["devices"]), info["devices"]
    layers = {m["preload"]: m["n_gpu_layers"] for m in info["models"]}
    assert layers["gpu"] != 0 and layers.get("cpu", 0) == 0, layers


def test_the_gpu_answers_as_the_api_says(server):
    r = httpx.post(server.url + "/v1/completions", json=BODY, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 16


def test_concurrent_streams_on_the_gpu_each_get_their_tokens(server):
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return httpx.post(server.url + "/v1/completions", json={**BODY, "max_tokens": 64}, timeout=300)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert all(a.status_code == 200 and a.json()["usage"]["completion_tokens"] == 64 for a in answers)
    assert len({a.json()["choices"][0]["text"] for a in answers}) == 1  # (greedy, same prompt: same text)
