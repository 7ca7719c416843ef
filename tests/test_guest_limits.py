"""What a hostile template or request body does to the guest: every size and integer a template
computes, running out of the guest's memory while rendering, and request bodies built to break
the parser all end in a 400 OpenAI error (template_error or invalid_request_error, naming the
param where there is one), never a trap (500), and the messages quote only a bounded part of what
the request sent."""

from __future__ import annotations

import json

import httpx
import pytest
from jinja_oracle import GuestRenderer, render_jinja2

from llama_host import APIError, Llama
from llama_host.engine.engine import EngineConfig
from llama_host.errors import ErrorKind
from llama_host.preload import parse_preloads
from llama_host.registry import ModelRegistry
from llama_host.serving import ModelRoute, Serving
from live import Server

M = [{"role": "user", "content": "hi"}]
MIN = "(-9223372036854775807 - 1)"  # the smallest i64, which the lexer cannot write as one literal
MAX = "9223372036854775807"

# Templates whose arithmetic or sizes once trapped (integer overflow, a cast of an i64 to wasm32's
# 32-bit usize) or ran the guest out of memory (500): now a template error naming the limit.
TEMPLATE_ERRORS = [
    ("{{ 'x' * 10**12 }}", "byte limit"),
    ("{{ 10**12 * 'ab' }}", "byte limit"),
    ("{{ 'x' * " + MAX + " }}", "byte limit"),
    ("{{ [1, 2] * 10**12 }}", "1000000 items"),
    ("{{ [0] * 4000000 }}", "1000000 items"),
    ("{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "items"),
    ("{% set l = [1] %}" + "{% set l = l + l %}" * 40, "items"),
    ("{{ ('x' * 2000000) | list | length }}", "items"),
    ("{% set s = 'x' * 2000000 %}{% for c in s %}{% endfor %}", "items"),
    ("{{ 'x' | center(10**12) }}", "byte limit"),
    ("{{ 'x'.center(10**12) }}{{ 'x'.ljust(10**12) }}", "byte limit"),
    ("{{ 'x'.rjust(10**12) }}", "byte limit"),
    ("{{ 'x'.zfill(10**12) }}", "byte limit"),
    ("{{ 'a\\nb' | indent(10**12) }}", "byte limit"),
    ("{{ [1, [2]] | tojson(indent=10**12) }}", "byte limit"),
    ("{% set s = 'x' * 1000000 %}{{ ([s] * 1000) | tojson }}", "byte limit"),
    ("{{ [1] | batch(10**12, 0) | list }}", "items"),
    ("{{ " + MIN + " | abs }}", "integer overflow"),
    ("{{ -" + MIN + " }}", "integer overflow"),
    ("{{ " + MIN + " // -1 }}", "integer overflow"),
    ("{{ " + MAX + " + 1 }}|{{ " + MIN + " - 1 }}", "integer overflow"),
    ("{{ 2 ** 64 }}", "integer overflow"),
    ("{{ 3 ** " + MAX + " }}", "integer overflow"),
    ("{{ " + MAX + " * 2 }}", "integer overflow"),
    ("{{ '%d' % (1e308 * 10) }}", "infinity"),
    ("{{ '%d' % (1e308 * 10 - 1e308 * 10) }}", "NaN"),
    ("{{ range(" + MIN + ", " + MAX + ") | length }}", "steps"),
    ("{{ range(" + MAX + ", " + MIN + ", -1) | length }}", "steps"),
    ("{{ range(0, " + MAX + ", 2) | length }}", "steps"),
    # memory: no single value is past a limit, but together they are more than the guest has
    ("{% for i in range(1000) %}{% set x = 'x' * 4000000 %}{% endfor %}", "the template needs more memory than the guest may use"),
    ("{% for i in range(200) %}{% set x = range(1000000) %}{% endfor %}", "the template needs more memory than the guest may use"),
    ("{% set s = 'x' * 4000000 %}{% set ns = namespace(l=[]) %}{% for i in range(10000) %}"
     "{% set ns.l = ns.l + [s ~ i] %}{% endfor %}", "the template needs more memory than the guest may use"),
    ("{% macro f(n) %}{% if n %}{% set x = 'y' * 4000000 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(30) }}",
     "the template needs more memory than the guest may use"),
]

# Templates on the same paths that are legal: they render as jinja2 renders them.
RENDERS = [
    "{{ [1, 2, 3][1::" + MAX + "] }}|{{ [1, 2, 3][::" + MIN + "] }}|{{ 'abc'[::" + MIN + "] }}|{{ [1, 2, 3][" + MIN + ":2] }}",
    "{{ [1, 2, 3][-1:" + MAX + "] }}|{{ 'héllo'[" + MIN + ":" + MAX + ":" + MAX + "] }}",
    "{{ " + MIN + " % -1 }}|{{ " + MIN + " % 3 }}|{{ 7 % -3 }}|{{ -7 % 3 }}|{{ " + MAX + " % " + MIN + " }}",
    "{{ '' * 10**12 }}|{{ [] * 10**12 }}|{{ 'ab' * -5 }}|{{ [1] * " + MIN + " }}|{{ 'ab' * 3 }}",
    "{{ [1, 2, 3] | batch(10**12) | list }}|{{ [1, 2, 3] | batch(2, 0) | list }}",
    "{{ '%d' % 1e19 }}|{{ '%d' % -2.5 }}|{{ '%d' % 3 }}",
    "{{ (-" + MAX + ") | abs }}|{{ range(" + MAX + " - 2, " + MAX + ") | list }}|{{ range(" + MIN + ", " + MIN + " + 4, 3) | list }}",
    "{{ 'x' | center(-10**12) }}|{{ 'x'.rjust(-5) }}|{{ [1] | tojson(indent=-3) }}",
    "{{ (-1) ** " + MAX + " }}|{{ 1 ** " + MAX + " }}|{{ 0 ** " + MAX + " }}",
]


@pytest.fixture(scope="module")
def guest():
    renderer = GuestRenderer()
    yield renderer
    renderer.close()


@pytest.mark.parametrize("source,needle", TEMPLATE_ERRORS, ids=[f"error{i}" for i in range(len(TEMPLATE_ERRORS))])
def test_template_arithmetic_and_sizes_are_template_errors(guest, source, needle):
    got = guest.render(source, {})  # a trap raises AssertionError
    assert got.text is None and needle in got.error, got


@pytest.mark.parametrize("source", RENDERS, ids=[f"render{i}" for i in range(len(RENDERS))])
def test_edge_arithmetic_renders_as_jinja2(guest, source):
    assert guest.render(source, {}).text == render_jinja2(source, {}).text


# --- through the serving stack: chat, apply-template, the Python API, a live server -----------

OOM_TEMPLATE = "{% for i in range(1000) %}{% set x = 'x' * 4000000 %}{% endfor %}"
ROUTES = {
    "repeat": "{{ 'x' * 10**12 }}",
    "double": "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
    "oom": OOM_TEMPLATE,
    "oom-range": "{% for i in range(200) %}{% set x = range(1000000) %}{% endfor %}",
    "recurse": "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
    "echo": "{{ raise_exception(messages[0].content) }}",
}


@pytest.fixture(scope="module")
def registry(model_path):
    preloads = parse_preloads([f"tiny:GGML:CPU:{model_path('tiny')}"])
    with ModelRegistry.load(preloads, EngineConfig(ctx_size=256, parallel=2, batch_size=64)) as reg:
        yield reg


@pytest.fixture(scope="module")
def serving(registry):
    routes = [ModelRoute.create("tiny", "tiny", "chatml")]
    routes += [ModelRoute(name, "tiny", name, source) for name, source in ROUTES.items()]
    with Serving(registry, routes, defaults={"temp": 0.0}) as s:
        yield s


def call(serving, command: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = serving.call(command, raw)
    assert not reply.streamed, reply
    return reply.status, json.loads(reply.body)


def error_of(serving, command: str, body, status: int = 400) -> dict:
    got, answer = call(serving, command, body)
    assert got == status and "error" in answer, (got, answer)
    error = answer["error"]
    size = len(json.dumps(error, ensure_ascii=False).encode())
    assert size < 1000, f"the message quotes too much: {size} bytes"
    return error


@pytest.mark.parametrize("model,words", [
    ("repeat", "byte limit"), ("double", "items"), ("oom", "the template needs more memory than the guest may use"),
    ("oom-range", "the template needs more memory than the guest may use"), ("recurse", "depth limit"),
])
def test_template_limits_are_400_template_error(serving, model, words):
    for command in ("chat", "apply-template"):
        for stream in (False, True):
            error = error_of(serving, command, {"model": model, "messages": M, "stream": stream, "max_tokens": 2})
            assert error["code"] == "template_error" and error["type"] == "invalid_request_error", error
            assert words in error["message"] and error["message"].startswith("the chat template failed"), error
    status, body = call(serving, "chat", {"model": "tiny", "messages": M, "max_tokens": 2})
    assert status == 200 and body["choices"][0]["message"]["content"] is not None


def test_template_messages_are_bounded(serving):
    """A template's own message (raise_exception of the request's text) is cut at 4096 bytes."""
    for content, tail in (("ab" * 2_000_000, "…"), ("é" * 3000, "é…")):
        status, answer = call(serving, "chat", {"model": "echo", "messages": [{"role": "user", "content": content}]})
        error = answer["error"]
        assert status == 400 and error["code"] == "template_error", error
        assert error["message"].endswith(tail) and len(error["message"].encode()) <= 4096 + 3, len(error["message"])


def test_python_api_template_out_of_memory_is_a_template_error(model_path, tmp_path):
    template = tmp_path / "hungry.jinja"
    template.write_text(OOM_TEMPLATE)
    with Llama(str(model_path("tiny")), n_ctx=256, chat_format=str(template), verbose=False) as llm:
        with pytest.raises(APIError) as caught:
            llm.create_chat_completion(M, max_tokens=2)
        assert caught.value.kind is ErrorKind.TEMPLATE_ERROR and caught.value.status == 400
        assert "needs more memory than the guest may use" in caught.value.message
        assert llm("abc", max_tokens=2)["choices"][0]["text"] is not None  # the next request is served


# --- max_tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command,param", [("chat", "max_tokens"), ("chat", "max_completion_tokens"),
                                           ("complete", "max_tokens"), ("apply-template", "max_completion_tokens")])
@pytest.mark.parametrize("n", [0, -1, -100, -(2**31), 2**31, 1e400, -1e400, 10**30])
def test_max_tokens_below_one_is_refused(serving, command, param, n):
    """Below 1 token, or past an i32 (completions take 0: the prompt is only scored)."""
    if command == "complete" and n == 0:
        status, answer = call(serving, command, {"model": "tiny", "prompt": "abc", "max_tokens": 0})
        assert status == 200 and answer["choices"][0]["text"] == "" and answer["usage"]["completion_tokens"] == 0
        return
    body = {"model": "tiny", "max_tokens": 4} if param == "max_completion_tokens" else {"model": "tiny"}
    body |= {"messages": M, param: n} if command != "complete" else {"prompt": "abc", param: n}
    raw = json.dumps(body).encode().replace(b"Infinity", b"1e400")
    error = error_of(serving, command, raw)
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    low = 0 if command == "complete" else 1
    assert param in error["message"] and (f"between {low} and" in error["message"] or f"out of range ({low} to" in error["message"])


def test_max_tokens_of_one_or_null_is_accepted(serving):
    for body in ({"model": "tiny", "messages": M, "max_tokens": 1, "ignore_eos": True},
                 {"model": "tiny", "messages": M, "max_completion_tokens": 1, "max_tokens": None, "ignore_eos": True}):
        status, answer = call(serving, "chat", body)
        assert status == 200 and answer["usage"]["completion_tokens"] == 1, answer
    status, answer = call(serving, "complete", {"model": "tiny", "prompt": "abc", "max_tokens": 1, "max_completion_tokens": 0})
    assert status == 200, answer  # completions have no max_completion_tokens: ignored as unknown


# --- what error messages quote ---------------------------------------------------------------------

LONG = "x" * 5_000_000


@pytest.mark.parametrize("command,body,param", [
    ("chat", {"model": LONG, "messages": M}, "model"),
    ("embed", {"model": LONG, "input": "hi"}, "model"),
    ("chat", {"model": "tiny", "messages": [{"role": LONG, "content": "x"}]}, "messages[0].role"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": LONG}]}]}, "messages[0].content[0].type"),
    ("chat", {"model": "tiny", "messages": M, "response_format": {"type": LONG}}, "response_format.type"),
    ("chat", {"model": "tiny", "messages": M, "logit_bias": {LONG: 1}}, "logit_bias"),
    ("chat", {"model": "tiny", "messages": M, "logit_bias": {"0" * 100_000 + "5": 1}}, "logit_bias"),
    ("embed", {"model": "tiny", "input": "hi", "encoding_format": LONG}, "encoding_format"),
])
def test_echoed_request_values_are_cut_to_100_characters(serving, command, body, param):
    error = error_of(serving, command, body, 404 if param == "model" else 400)
    assert error["param"] == param, error
    assert "x" * 100 + "…" in error["message"] or "0" * 100 + "…" in error["message"], error
    assert "x" * 101 not in error["message"] and "0" * 101 not in error["message"]


def test_a_cut_never_splits_a_character(serving):
    for name, kept in (("é" * 5000, "é" * 100), ("🦙" * 5000, "🦙" * 100), ("a" + "日本" * 100, "a" + "日本" * 49 + "日")):
        error = error_of(serving, "chat", {"model": name, "messages": M}, 404)
        assert f"'{kept}…'" in error["message"], error["message"]
    error = error_of(serving, "chat", {"model": "x" * 100, "messages": M}, 404)
    assert "'" + "x" * 100 + "'" in error["message"]  # exactly 100: no ellipsis


# --- hostile bodies ------------------------------------------------------------------------------

DEEP = 100_000
HOSTILE = [
    (b"[" * DEEP, None, "deeper than 64"),
    (b"[" * DEEP + b"]" * DEEP, None, "deeper than 64"),
    (b"{\"a\":" * DEEP + b"1" + b"}" * DEEP, None, "deeper than 64"),
    (b'{"model": "tiny", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}", None, "deeper than 64"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": ' + b"[" * DEEP + b"}", None, "deeper than 64"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": ' + b"{\"a\":" * DEEP + b"}", None, "deeper"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None, "invalid UTF-8"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xc0\xaf"}]}', None, "invalid UTF-8"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', None, "invalid UTF-8"),
    (b'{"mod\xffel": "tiny"}', None, "invalid UTF-8"),
    (b'{"model": "tiny"\xff}', None, "not valid JSON"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "a\x00b"}]}', None, "not valid JSON"),
    (b'{"model": "tiny",\x00 "messages": []}', None, "not valid JSON"),
    (b"\x00", None, "not valid JSON"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', None, "unpaired UTF-16 surrogate"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udc00"}]}', None, "unpaired UTF-16 surrogate"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x\\ud83d\\u0041"}]}', None, "unpaired UTF-16 surrogate"),
    (b'{"model": "\\udfff"}', None, "unpaired UTF-16 surrogate"),
    (b'{"\\ud800": 1}', None, "unpaired UTF-16 surrogate"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "temperature", "between"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1e400}', "temperature", "between"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 1e-400}', None, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 100_000 + b"}", "seed", "out of range"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": -1' + b"0" * 100_000 + b"}", "seed", "out of range"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_k": 1.5e300}', "top_k", "out of range"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 1e400}}', "logit_bias.5", "between"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "x": 1' + b"0" * 1_000_000 + b"}", None, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "x": 1.' + b"5" * 1_000_000 + b"}", None, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.' + b"0" * 1_000_000 + b"1}", None, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "x": -0.0e-99999999999999999999}', None, None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e99999999999999999999}', "temperature",
     "got 1e99999999999999999999"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1' + b"0" * 1000 + b'}', "temperature",
     "got 1" + "0" * 99 + "…"),
    # millions of tiny values in a body the host lets through: more than the guest can parse
    (b'{"model": "tiny", "messages": [], "x": [' + b"0," * 7_000_000 + b"0]}", None, "more JSON values than the guest"),
    (b'{"model": "tiny", "messages": [], "x": [' + b"[]," * 5_000_000 + b"0]}", None, "more JSON values than the guest"),
    (b'{"model": "tiny", "messages": [], "x": {' + b",".join(b'"%d":0' % i for i in range(1_500_000)) + b"}}", None,
     "more JSON values than the guest"),
]


@pytest.mark.parametrize("raw,param,words", HOSTILE, ids=[f"body{i}" for i in range(len(HOSTILE))])
def test_hostile_bodies_are_400(serving, raw, param, words):
    for command in ("apply-template",) if words is None else ("chat", "apply-template"):
        status, answer = call(serving, command, raw)
        if words is None:  # legal, if odd: answered (apply-template: parsed and checked as chat is)
            assert status == 200, answer
            continue
        assert status == 400, answer
        error = answer["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"], error
        assert len(error["message"]) < 300


def test_nul_characters_are_text(serving):
    """`\\u0000` is a legal JSON escape: a NUL in the text, the model name, a stop string, a role."""
    status, answer = call(serving, "chat", {"model": "tiny", "messages": [{"role": "user", "content": "a\u0000b"}],
                                            "max_tokens": 2, "stop": ["\u0000"]})
    assert status == 200, answer
    status, answer = call(serving, "apply-template", {"model": "tiny", "messages": [{"role": "user", "content": "a\u0000b"}]})
    assert status == 200 and "a\u0000b" in answer["prompt"]
    assert "'tiny\u0000'" in error_of(serving, "chat", {"model": "tiny\u0000", "messages": M}, 404)["message"]
    assert error_of(serving, "chat", {"model": "tiny", "messages": [{"role": "user\u0000", "content": "x"}]})["param"] == \
        "messages[0].role"


# Each request field with values of every wrong type: a 400 naming the field (or a 200 for a value
# that is legal), never a 500.
WRONG = [[], {}, "x", True, 1.5, -1, 10**30, [[[]]], {"a": {"b": None}}, "\u0000", ""]
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "min_p", "top_k",
          "presence_penalty", "frequency_penalty", "repeat_penalty", "repeat_last_n", "seed", "ignore_eos", "grammar",
          "user", "n", "logprobs", "stop", "logit_bias", "response_format", "stream", "stream_options", "tools"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]


# completions take these of the fields above
COMPLETION_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "logprobs",
                     "logit_bias", "ignore_eos", "user", "stream_options"}


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "stream"])  # stream: test_stream_is_checked
def test_wrong_types_name_the_field(serving, field):
    for v in WRONG:
        bodies = [("apply-template", {"model": "tiny", "messages": M, field: v})]
        if field in COMPLETION_FIELDS:  # max_tokens 1 keeps a legal value's generation short
            bodies.append(("complete", {"model": "tiny", "prompt": "a", "max_tokens": 1, field: v}))
        for command, body in bodies:
            status, answer = call(serving, command, body)
            if status == 200:
                continue  # a legal value
            assert status in (400, 404), (command, field, v, answer)
            assert (answer["error"]["param"] or "").startswith(field), (command, field, v, answer)


@pytest.mark.parametrize("field", MESSAGE_FIELDS)
def test_wrong_types_in_messages_name_the_field(serving, field):
    for v in WRONG:
        message = {"role": "user", "content": "hi", field: v}
        status, answer = call(serving, "apply-template", {"model": "tiny", "messages": [message]})
        if status != 200:
            assert status == 400 and answer["error"]["param"].startswith(f"messages[0].{field}"), (field, v, answer)


def test_stream_is_checked(serving):
    for v in WRONG:
        if v is True:
            continue
        status, answer = call(serving, "chat", {"model": "tiny", "messages": M, "stream": v, "max_tokens": 1})
        assert status == 400 and answer["error"]["param"] == "stream", (v, answer)


# --- a live server ---------------------------------------------------------------------------------


def test_live_server_answers_hostile_requests_with_small_400s(model_path, tmp_path):
    template = tmp_path / "hungry.jinja"
    template.write_text(OOM_TEMPLATE)
    s = Server([f"--nn-preload=tiny:GGML:CPU:{model_path('tiny')}", "--ctx-size", "256", "--parallel", "1",
                "tiny", str(template)])
    try:
        url = s.url + "/v1/chat/completions"
        r = httpx.post(url, json={"model": "m" * 5_000_000, "messages": M}, timeout=60)
        assert r.status_code == 404 and len(r.content) < 1000 and "m" * 100 + "…" in r.json()["error"]["message"]
        r = httpx.post(url, json={"model": "tiny", "messages": M, "max_tokens": 0}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": -1}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        for raw in (b"[" * DEEP, b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
                    b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}'):
            r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
        r = httpx.post(url, json={"model": "tiny", "messages": M}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "template_error", r.text
        assert "needs more memory than the guest may use" in r.json()["error"]["message"]
        assert s.healthy()
    finally:
        s.stop()
