"""The server end to end: `llama-host` started as a subprocess on an ephemeral port, driven by the
openai SDK and httpx as users drive it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from jinja_oracle import render_jinja2
from live import Server
from llama_host.engine.model import Model


@pytest.fixture(scope="module")
def spm(model_path):
    return str(model_path("spm"))


@pytest.fixture(scope="module")
def server(spm, model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{spm}", f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}",
                "--model-name", "default,gpt-3.5-turbo", "--ctx-size", "512", "--parallel", "8", "--batch-size", "128",
                "default", "llama-2-chat"])
    yield s
    assert s.stop() == 0, s.output


M = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


def test_models(server):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == ["default", "gpt-3.5-turbo", "tiny"]
    assert httpx.post(server.url + "/v1/models").json()["data"][0]["id"] == "default"


def test_chat_with_exact_usage(server, spm):
    r = server.client().chat.completions.create(model="gpt-3.5-turbo", messages=M, max_tokens=7,
                                                extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.model == "gpt-3.5-turbo"
    template = open(os.path.join(os.path.dirname(__file__), "..", "templates", "llama-2-chat.jinja")).read()
    prompt = render_jinja2(template, {"messages": M, "add_generation_prompt": True, "bos_token": "<s>",
                                      "eos_token": "</s>"}).text
    with Model(spm, vocab_only=True) as vocab:
        n_prompt = len(vocab.tokenize(prompt))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 7, n_prompt + 7)


def test_stream_equals_non_stream(server):
    client = server.client()
    whole = client.chat.completions.create(model="default", messages=M, max_tokens=9, temperature=0)
    chunks = list(client.chat.completions.create(model="default", messages=M, max_tokens=9, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and chunks[-1].choices == []


def test_stop_and_seed(server):
    client = server.client()
    args = dict(model="tiny", prompt="one two three", max_tokens=12, temperature=1.0, seed=7,
                extra_body={"ignore_eos": True})
    a, b = (client.completions.create(**args).choices[0].text for _ in range(2))
    assert a == b
    stop = a[3:6]
    c = client.completions.create(**{**args, "stop": [stop]})
    assert c.choices[0].finish_reason == "stop" and stop not in c.choices[0].text


def test_json_response_format(server):
    r = server.client().chat.completions.create(model="tiny", messages=M, max_tokens=60, temperature=0,
                                                response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.lstrip().startswith("{")


ENUM_SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x"]}}, "required": ["a"], "additionalProperties": False}


def _obeys_enum_schema(content: str, finish_reason: str) -> bool:
    """The only object ENUM_SCHEMA allows is {"a": "x"}; cut short, a prefix of it."""
    if finish_reason == "stop":
        return json.loads(content) == {"a": "x"}
    return '{"a":"x"}'.startswith("".join(content.split()))


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_object", "schema": ENUM_SCHEMA}},  # llama-server's extension
    {"json_schema": ENUM_SCHEMA},  # llama-server's top-level field
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": ENUM_SCHEMA}}},
    {"json_schema": {"type": "string"}, "response_format": {"type": "json_object", "schema": ENUM_SCHEMA}},
])
def test_schemas_beside_json_object_and_top_level_constrain_the_answer(server, extra):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"model": "tiny", "messages": M, "max_tokens": 40, "temperature": 0, **extra}).json()
    choice = r["choices"][0]
    assert _obeys_enum_schema(choice["message"]["content"], choice["finish_reason"]), choice


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_object", "schema": {"type": "nonsense"}}}, "response_format.schema"),
    ({"json_schema": {"$ref": "#/definitions/missing"}}, "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"pattern": "("}}}},
     "response_format.json_schema.schema"),
    ({"json_schema": "not an object"}, "json_schema"),
    ({"response_format": {"type": "json_object", "schema": []}}, "response_format.schema"),
])
def test_an_invalid_schema_is_a_400_naming_its_field(server, extra, param):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": M, "max_tokens": 4, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    completion = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 4,
                                                                  "json_schema": {"type": "nonsense"}})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "json_schema"


def test_models_retrieve(server):
    client = server.client()
    model = client.models.retrieve("gpt-3.5-turbo")
    assert (model.id, model.object, model.owned_by) == ("gpt-3.5-turbo", "model", "llama-host")
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("org/missing-model")
    assert e.value.body["code"] == "model_not_found" and "available: default, gpt-3.5-turbo, tiny" in e.value.body["message"]
    assert httpx.get(server.url + "/models/tiny").json()["id"] == "tiny"


def test_routes_without_v1_answer_as_with_it(server):
    client = openai.OpenAI(base_url=server.url, api_key="none")
    chat = dict(model="tiny", messages=M, max_tokens=5, temperature=0)
    assert (client.chat.completions.create(**chat).choices[0].message.content
            == server.client().chat.completions.create(**chat).choices[0].message.content)
    text = dict(model="tiny", prompt="one two", max_tokens=5, temperature=0)
    assert client.completions.create(**text).choices[0].text == server.client().completions.create(**text).choices[0].text
    assert client.embeddings.create(model="tiny", input="hi").data[0].embedding == pytest.approx(
        server.client().embeddings.create(model="tiny", input="hi").data[0].embedding, abs=1e-6)
    assert [m.id for m in client.models.list().data] == ["default", "gpt-3.5-turbo", "tiny"]
    prompt = httpx.post(server.url + "/apply-template", json={"model": "tiny", "messages": M}).json()["prompt"]
    assert prompt == httpx.post(server.url + "/v1/apply-template", json={"model": "tiny", "messages": M}).json()["prompt"]
    # /embeddings is llm-api's too: its body has "text" where OpenAI's has "input"
    llm_api = httpx.post(server.url + "/embeddings", json={"text": "hi"}).json()
    assert isinstance(llm_api, list) and len(llm_api) > 1


def test_every_answer_has_a_request_id(server):
    client = server.client()
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=M, max_tokens=2)
    assert raw.request_id == raw.parse().id and raw.request_id.startswith("chatcmpl-")
    with client.completions.with_streaming_response.create(model="tiny", prompt="a", max_tokens=2, stream=True) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert r.headers["x-request-id"] == chunks[0]["id"] and r.headers["x-request-id"].startswith("cmpl-")
    ids = {httpx.get(server.url + path).headers["x-request-id"] for path in ("/v1/models", "/health", "/v1/nothing")}
    error = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": []})
    ids.add(error.headers["x-request-id"])
    ids.add(httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": "a"}).headers["x-request-id"])
    assert len(ids) == 5 and all(i.startswith("req-") for i in ids)


def test_the_log_line_of_a_request_names_its_id(model_path):
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--log-level", "info", "tiny", "chatml"])
    try:
        r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2})
        bad = httpx.post(s.url + "/v1/completions", json={"model": "tiny"})
        httpx.get(s.url + "/health")
    finally:
        assert s.stop() == 0
    assert f"POST /v1/completions 200 {r.headers['x-request-id']}" in s.output
    assert f"POST /v1/completions 400 {bad.headers['x-request-id']}" in s.output
    assert "GET /health" not in s.output


def test_embeddings_float_and_base64(server):
    client = server.client()
    r = client.embeddings.create(model="tiny", input=["hello world", "bye"])  # the SDK asks for base64
    raw = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": "hello world"}).json()
    assert len(r.data) == 2 and r.data[0].embedding == pytest.approx(raw["data"][0]["embedding"], abs=1e-6)
    assert sum(x * x for x in raw["data"][0]["embedding"]) == pytest.approx(1.0, abs=1e-4)


def test_sdk_errors_are_typed(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=M)
    assert "default, gpt-3.5-turbo, tiny" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=M, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 3000}])
    assert e.value.code == "context_length_exceeded"


def test_async_client(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        streams = [await client.completions.create(model="tiny", prompt=f"p{i}", max_tokens=8, stream=True,
                                                   extra_body={"ignore_eos": True}) for i in range(3)]
        texts = []
        for s in streams:
            texts.append("".join([c.choices[0].text async for c in s if c.choices]))
        await client.close()
        return texts

    texts = asyncio.run(main())
    assert len(texts) == 3 and all(texts)


def test_raw_sse_framing(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions",
                      json={"model": "tiny", "messages": M, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_curl_example_from_the_readme(server):
    # LlamaEdge's README example, as written
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", server.url + "/v1/chat/completions", "-H", "accept:application/json",
         "-H", "Content-Type: application/json", "-d",
         '{"messages":[{"role":"system", "content": "You are a helpful assistant."}, '
         '{"role":"user", "content": "What is the capital of France?"}], "model":"default", "max_tokens": 5}'],
        capture_output=True, check=True)
    assert json.loads(out.stdout)["object"] == "chat.completion"


def test_eight_streams_are_batched(server):
    def one(i):
        with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                          json={"model": "default", "prompt": f"story {i}", "max_tokens": 24, "ignore_eos": True,
                                "stream": True}) as r:
            return sum(1 for line in r.iter_lines() if line.startswith("data: {"))

    def decode_calls():
        text = httpx.get(server.url + "/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('llama_host_decode_calls_total{model="default"}'))

    before = decode_calls()
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(one, range(8)))
    assert all(c >= 24 for c in counts)
    # 8 x 24 tokens alone would take >= 192 decode calls; batched, far fewer
    assert decode_calls() - before < 8 * 24 * 0.6


def test_disconnect_cancels_the_generation(server):
    def generated():
        return sum(float(line.split()[-1]) for line in httpx.get(server.url + "/metrics").text.splitlines()
                   if line.startswith('llama_host_generated_tokens_total{model="default"}'))

    before = generated()
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": "default", "prompt": "long", "max_tokens": 480, "ignore_eos": True,
                            "stream": True}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while 'llama_host_busy_sequences{model="default"} 0.0' not in httpx.get(server.url + "/metrics").text:
        assert time.monotonic() < deadline, "the sequence was not freed after the client left"
        time.sleep(0.02)
    # cancelled at the next token the guest tried to send, not run to its 480 tokens
    assert generated() - before < 240


BAD = [
    (b"{", 400, "not valid JSON"),
    (b'{"messages": [{"role": "user", "content": "\xff"}]}', 400, "invalid UTF-8"),
    (b'{"messages": 5}', 400, "must be an array"),
    (b"[" * 100_000, 400, "deeper than 64"),
]


@pytest.mark.parametrize("body,status,words", BAD, ids=range(len(BAD)))
def test_bad_bodies(server, body, status, words):
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and words in r.json()["error"]["message"]
    assert server.healthy()


def raw_http(server, *parts: bytes) -> bytes:
    """Send ``parts`` one by one on a fresh connection and return everything the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            for part in parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload: the answer is already waiting
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("parts", [
    [HEAD + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n{}"],  # one huge header
    [HEAD] + [b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(100)] + [b"\r\n{}"],  # many, sent one by one
    [b"GET /health?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"],  # a huge request line
    [HEAD + b"X-Endless: " + b"c" * 1_000_000],  # a head that never ends
], ids=["one-header", "many-headers", "request-line", "endless"])
def test_oversized_request_head_is_431_and_bounded(server, parts):
    answer = raw_http(server, *parts)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "request_headers_too_large" and "65536 bytes" in error["message"]
    assert server.healthy()


def test_request_heads_under_the_bound_and_large_bodies_pass(server):
    # 60 KB of headers is fine; so is a 1 MB body (it is not head), here refused for its content.
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"h" * 1000) for i in range(60))
    answer = raw_http(server, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    body = b" " * 1_000_000 + b'{"messages": 5}'
    answer = raw_http(server, HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"must be an array" in answer
    # Two pipelined requests, the second after a body: both answered.
    one = b'{"model": "default", "messages": []}'
    req = HEAD + b"Content-Length: %d\r\n\r\n" % len(one) + one
    answer = raw_http(server, req + req[:-1].replace(b"Host: x", b"Host: x\r\nConnection: close") + req[-1:])
    assert answer.count(b"HTTP/1.1 400 ") == 2


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", HEAD + b"Content-Length: abc\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"], ids=range(3))
def test_malformed_http_is_an_openai_400_and_the_server_goes_on(server, raw):
    head, _, body = raw_http(server, raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"content-type: application/json" in head
    assert json.loads(body)["error"] == {"message": "the request is not valid HTTP/1.1",
                                         "type": "invalid_request_error", "param": None, "code": None}
    assert server.healthy()


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_info_and_metrics(server):
    info = httpx.get(server.url + "/v1/info").json()
    assert info["server"]["name"] == "llama-host" and info["models"][0]["template"] == "llama-2-chat"
    metrics = httpx.get(server.url + "/metrics").text
    assert "llama_host_requests_total" in metrics and "llama_host_time_to_first_token_seconds_bucket" in metrics


# --- servers with other settings -------------------------------------------------------------


def test_api_key_cors_body_limit_and_web_ui(model_path, tmp_path):
    (tmp_path / "index.html").write_text("<title>my chat ui</title>")
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--max-body-bytes", "2000", "--web-ui", str(tmp_path),
                "--cors-origins", "https://chat.example,localhost", "tiny", "chatml"], env={"API_KEY": "s3cret"})
    try:
        body = {"model": "tiny", "messages": M, "max_tokens": 2}
        assert httpx.post(s.url + "/v1/chat/completions", json=body).status_code == 401
        bad = httpx.post(s.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").completions.create(model="tiny", prompt="hi", max_tokens=1)
        assert s.client(api_key="s3cret").chat.completions.create(**body).choices[0].message.role == "assistant"
        # Public, as on llama-server: the probes of load balancers and OpenAI clients.
        assert httpx.get(s.url + "/health").status_code == 200
        assert [m.id for m in s.client(api_key="wrong").models.list().data] == ["tiny"]
        assert s.client(api_key="wrong").models.retrieve("tiny").id == "tiny"
        assert httpx.get(s.url + "/models").status_code == 200
        # Behind the key: what reaches a model (with or without /v1), and the metrics.
        assert httpx.post(s.url + "/v1/models").status_code == 401
        for path in ("/chat/completions", "/completions", "/embeddings", "/apply-template"):
            unauthorized = httpx.post(s.url + path, json=body)
            assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"].startswith("req-"), path
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # HTTP's schemes are case-free; a HEAD is a GET; two keys are one too many (which counts?)
        assert httpx.get(s.url + "/metrics", headers={"Authorization": "bearer s3cret"}).status_code == 200
        assert httpx.head(s.url + "/v1/models").status_code == 200
        two = httpx.get(s.url + "/metrics", headers=[("Authorization", "Bearer nope"), ("Authorization", "Bearer s3cret")])
        assert two.status_code == 401
        assert httpx.get(s.url + "/metrics", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert httpx.get(s.url + "/metrics", headers={"x-api-key": "s3cret"}).status_code == 200
        assert "my chat ui" in httpx.get(s.url + "/").text
        pre = httpx.options(s.url + "/v1/chat/completions", headers={
            "Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://chat.example"
        cors = httpx.get(s.url + "/v1/models", headers={"Origin": "https://chat.example"})
        assert cors.headers["access-control-expose-headers"].lower() == "x-request-id"
        for origin, allowed in (("http://localhost:5173", True), ("http://127.0.0.1:3000", True), ("http://[::1]", True),
                                ("http://localhost.evil.example", False), ("https://evil.example", False)):
            pre = httpx.options(s.url + "/v1/messages", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key,content-type"})
            assert (pre.headers.get("access-control-allow-origin") == origin) is allowed, origin
        big = httpx.post(s.url + "/v1/chat/completions", headers={"Authorization": "Bearer s3cret"},
                         json={**body, "messages": [{"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        assert s.healthy()
    finally:
        s.stop()
    assert "s3cret" not in s.output


def test_queue_full_is_503_with_retry_after(model_path):
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--parallel", "1", "--queue-size", "0",
                "--ctx-size", "2048", "tiny", "chatml"])
    try:
        with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "a", "max_tokens": 1500, "ignore_eos": True,
                                "stream": True}) as r:
            next(r.iter_lines())
            busy = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "b", "max_tokens": 2})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "queue_full"
    finally:
        assert s.stop() == 0


def test_demo_model_when_no_preload(tmp_path):
    s = Server([], env={"LLAMA_HOST_CACHE": str(tmp_path)})
    try:
        r = s.client().chat.completions.create(model="default", messages=M, max_tokens=3)
        assert r.choices[0].message.role == "assistant"
    finally:
        s.stop()
    assert "DEMO model" in s.output


CLI_ERRORS = [
    (["--nn-preload", "x:GGML:CPU"], "NAME:ENCODING:TARGET:PATH"),
    (["--nn-preload", "x:ONNX:CPU:/tmp/m.gguf", "x"], "encoding"),
    (["--nn-preload", "x:GGML:TPU:/tmp/m.gguf", "x"], "target"),
    (["--nn-preload", "x:GGML:CPU:/no/such.gguf", "x"], "not found"),
    (["--ctx-size", "zero"], "--ctx-size"),
    (["--parallel", "0"], "--parallel must be at least 1"),
    (["--socket-addr", "nowhere"], "HOST:PORT"),
    (["--socket-addr", "[::1:80"], "HOST:PORT"),  # (it listened on [::1]:80)
    (["--socket-addr", "[]:80"], "HOST:PORT"),
    (["--port", "70000"], "between 0 and 65535"),
    (["--log-level", "loud"], "log level"),
    (["--web-ui", "/no/such/dir"], "not a folder"),
    (["--frobnicate"], "No such option"),
    (["--timeout-head", "0"], "--timeout-head must be more than 0"),
    (["--timeout-body", "1e9"], "at most 86400 seconds"),
    (["--timeout-keep-alive", "soon"], "--timeout-keep-alive"),
    (["--shutdown-grace", "-1"], "--shutdown-grace must be more than 0"),
    (["--pooling", "rank"], "--pooling must be mean, cls, last, none"),
    (["--cache-ram", "-2"], "--cache-ram must be at least -1"),
    # (NaN and infinity reached every request's sampling and the guest's JSON config: 500s)
    (["--temp", "nan"], "--temp must be a finite number"),
    (["--top-p", "inf"], "--top-p must be a finite number"),
    (["--repeat-penalty", "-inf"], "--repeat-penalty must be a finite number"),
    (["--presence-penalty", "nan"], "--presence-penalty must be a finite number"),
    (["--frequency-penalty", "1e999"], "--frequency-penalty must be a finite number"),
    # (a wait past time_t ended the keep-alive thread; NaN meant "never")
    (["--keep-alive", "inf"], "--keep-alive must be negative (no limit) or 0 to"),
    (["--keep-alive", "nan"], "--keep-alive must be negative (no limit) or 0 to"),
]


@pytest.mark.parametrize("args,words", CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_cli_errors_are_one_clear_line(args, words):
    r = subprocess.run([sys.executable, "-m", "llama_host.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-host: error:") and words in lines[0], r.stderr


def test_cli_alias_and_template_errors(model_path):
    tiny = model_path("tiny")
    for args, words in (([f"--nn-preload=a:GGML:CPU:{tiny}", "b"], "names no --nn-preload"),
                        ([f"--nn-preload=a:GGML:CPU:{tiny}", "a", "no-such-template"], "unknown prompt template")):
        r = subprocess.run([sys.executable, "-m", "llama_host.cli", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr


def test_help_explains_every_option():
    r = subprocess.run([sys.executable, "-m", "llama_host.cli", "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0
    for option in ("--nn-preload", "--socket-addr", "--port", "--model-name", "--ctx-size", "--batch-size", "--parallel",
                   "--n-predict", "--n-gpu-layers", "--threads", "--temp", "--top-p", "--repeat-penalty",
                   "--presence-penalty", "--frequency-penalty", "--reverse-prompt", "--api-key", "--cors-origins",
                   "--web-ui", "--max-body-bytes", "--queue-size", "--log-level"):
        assert option in r.stdout
