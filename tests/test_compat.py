"""The older servers' APIs, against a live llama-host, with their clients' code as written."""

from __future__ import annotations

import json

import httpx
import pytest
import requests

from live import Server


@pytest.fixture(scope="module")
def server(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('spm')}", f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}",
                "--ctx-size", "1024", "--n-predict", "24", "default", "llama-2-chat"])
    yield s
    assert s.stop() == 0, s.output


def test_llama2_reference_client_as_written(server):
    SERVER = server.url
    content = "Write about the sea."
    messages = [{"role": "system", "content": "Always answer in haiku"}]
    messages.append({"role": "user", "content": content})
    response = requests.put(f"{SERVER}/put/text", json=messages, headers={"Content-Type": "application/json"})
    choices = response.json().get("choices", {})
    messages.append(choices)
    assert response.status_code == 200 and choices["role"] == "assistant" and isinstance(choices["content"], str)
    body = response.json()
    assert isinstance(body["worker_id"], int) and isinstance(body["version"], str) and body["latency"] > 0
    # the next turn sends the history back, assistant message included
    again = requests.put(f"{SERVER}/put/text", json={"messages": messages, "max_gen_len": 3, "temperature": 0})
    assert again.status_code == 200 and again.json()["choices"]["role"] == "assistant"


def test_llama2_errors(server):
    for body, param in (({"max_gen_len": 3}, "messages"), ({"messages": "hi"}, "messages"),
                        ({"messages": [{"role": "user", "content": "x"}], "max_gen_len": "3"}, "max_gen_len"),
                        ({"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
                        ({"messages": [{"role": "user"}]}, "messages[0].content")):
        r = requests.put(f"{server.url}/put/text", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


def test_llama_go_completion(server):
    body = {"prompt": "Once upon a time", "tokens": 6, "temp": 0}
    r = httpx.post(server.url + "/api/completion", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"Prompt", "Text", "Tokens", "CompleteReason"}
    assert out["Prompt"] == "Once upon a time" and out["Tokens"] <= 6 and out["CompleteReason"] in ("stop", "length")
    same = httpx.post(server.url + "/v1/completions", json={"model": "default", "prompt": "Once upon a time",
                                                            "max_tokens": 6, "temperature": 0, "top_k": 40,
                                                            "top_p": 0.9, "repeat_penalty": 1.3,
                                                            "repeat_last_n": 64}).json()
    assert out["Text"] == same["choices"][0]["text"]


@pytest.mark.parametrize("body,param", [
    ({"tokens": 5}, "prompt"), ({"prompt": "x"}, "tokens"), ({"prompt": 1, "tokens": 5}, "prompt"),
    ({"prompt": "x", "tokens": "5"}, "tokens"), ({"prompt": "x", "tokens": 5, "top_k": 1.5}, "top_k"),
    ({"prompt": "x", "tokens": 5, "repeat_lastn": "64"}, "repeat_lastn"),
])
def test_llama_go_required_and_typed_fields(server, body, param):
    r = httpx.post(server.url + "/api/completion", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param and param in r.json()["error"]["message"]


def test_llm_api_generate_agenerate_embeddings_check(server):
    body = {"prompt": "The sky is", "params": {"n_predict": 8, "temp": 0}}
    text = httpx.post(server.url + "/generate", json=body).json()
    assert isinstance(text, str)
    with httpx.stream("POST", server.url + "/agenerate", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    pieces = []
    for event in raw.split("\r\n\r\n"):
        if event:
            pieces.append("\n".join(line[6:] for line in event.split("\r\n")))
    assert "".join(pieces) == text
    vector = httpx.post(server.url + "/embeddings", json={"text": "hello"}).json()
    assert isinstance(vector, list) and len(vector) > 8 and all(isinstance(x, float) for x in vector)
    assert httpx.get(server.url + "/check").json() == "Ok"


def test_llm_api_errors(server):
    for path, body, param in (("/generate", {"params": {}}, "prompt"),
                              ("/generate", {"prompt": "x", "params": {"n_predict": "many"}}, "params.n_predict"),
                              ("/generate", {"prompt": "x", "params": []}, "params"),
                              ("/agenerate", {"prompt": 5}, "prompt"), ("/embeddings", {}, "text")):
        r = httpx.post(server.url + path, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, r.text)
    r = httpx.post(server.url + "/generate", content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert server.healthy()


def test_llm_api_config_file(model_path, tmp_path):
    tiny = model_path("tiny")
    (tmp_path / "config.yaml").write_text(
        f"models_dir: {tiny.parent}\nmodel_family: llama\nmodel_name: tiny-llm\n"
        f"setup_params:\n  repo_id: someone/something\n  filename: {tiny.name}\n"
        "model_params:\n  ctx_size: 512\n  n_threads: 2\n  batch_size: 64\n  seed: 7\n"
        "host: 127.0.0.1\nport: 1\nlog_level: warning\n")
    # the command line (--socket-addr from Server) and LLAMA_HOST_* variables win over the file
    s = Server(["--config", str(tmp_path / "config.yaml")], env={"LLAMA_HOST_PARALLEL": "2"})
    try:
        info = httpx.get(s.url + "/v1/info").json()
        assert info["models"][0]["id"] == "tiny-llm" and info["settings"]["ctx_size"] == 512
        assert info["settings"]["parallel"] == 2 and info["settings"]["defaults"]["seed"] == 7
        assert isinstance(httpx.post(s.url + "/generate", json={"prompt": "hi", "params": {"n_predict": 2}}).json(), str)
    finally:
        s.stop()


def test_a_config_files_models_dir_is_served_on_demand(model_path, tmp_path):
    """Without an llm-api model (setup_params.filename), models-dir is llama-host's --models-dir,
    relative to the file."""
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(model_path("tiny"), tmp_path / "models" / "little.gguf")
    (tmp_path / "config.yaml").write_text("models-dir: models\nmodels-max: 1\n")
    s = Server(["--config", str(tmp_path / "config.yaml")])
    try:
        listed = httpx.get(s.url + "/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["little"]
        r = httpx.post(s.url + "/v1/completions", json={"model": "little", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text
    finally:
        s.stop()


def test_bad_config_files(tmp_path):
    import subprocess
    import sys

    cases = [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "mapping"), ("frobnicate: 3\n", "unknown option 'frobnicate'"),
             ("ctx-size: 0\n", "--ctx-size must be at least 1")]
    for text, words in cases:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        r = subprocess.run([sys.executable, "-m", "llama_host.cli", "--config", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_api_key_guards_the_older_apis(model_path):
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--api-key", "k", "tiny", "chatml"])
    try:
        assert httpx.post(s.url + "/generate", json={"prompt": "x"}).status_code == 401
        assert httpx.put(s.url + "/put/text", json=[{"role": "user", "content": "x"}]).status_code == 401
        ok = httpx.post(s.url + "/generate", json={"prompt": "x", "params": {"n_predict": 2}},
                        headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/check").status_code == 200
    finally:
        s.stop()
