"""The guest's OpenAI API against real models: chat and text completions, streamed and not,
request validation. Responses are parsed with the openai SDK's own types, as a client would."""

from __future__ import annotations

import json

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from jinja_oracle import render_jinja2
from llama_host.engine.engine import EngineConfig
from llama_host.engine.request import GenerationRequest
from llama_host.preload import parse_preloads
from llama_host.registry import ModelRegistry
from llama_host.serving import ModelRoute, Serving

N_CTX = 512


@pytest.fixture(scope="module")
def registry(model_path):
    preloads = parse_preloads([f"spm:GGML:CPU:{model_path('spm')}", f"tiny:GGML:CPU:{model_path('tiny')}"])
    with ModelRegistry.load(preloads, EngineConfig(ctx_size=N_CTX, parallel=4, batch_size=64)) as reg:
        yield reg


@pytest.fixture(scope="module")
def serving(registry):
    routes = [
        ModelRoute.create("llama", "spm", "auto"),
        ModelRoute.create("tiny", "tiny", "auto"),
        ModelRoute.create("chatml-tiny", "tiny", "chatml"),
    ]
    with Serving(registry, routes, defaults={"temp": 0.0}) as s:
        yield s


def call(serving, command: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = serving.call(command, raw)
    assert not reply.streamed
    return reply.status, json.loads(reply.body)


def stream(serving, command: str, body: dict) -> list:
    reply = serving.call(command, json.dumps(body).encode())
    assert reply.status == 200 and reply.streamed and reply.error is None, reply
    *events, done = reply.events
    assert done == b"[DONE]"
    return [json.loads(e) for e in events]


def counts(usage: dict) -> tuple:
    """Token counts (cached_tokens depends on what earlier tests left in the KV cache)."""
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def engine_text(registry, preload: str, prompt: str, n: int, **kw) -> tuple[str, int]:
    served = registry.get(preload)
    tokens = served.model.tokenize(prompt.encode())
    text, _ = served.engine.generate(GenerationRequest(tokens, max_tokens=n, **kw))
    return text, len(tokens)


# --- text completions ----------------------------------------------------------------------------


def test_completion_equals_the_engine_with_exact_usage(serving, registry):
    status, body = call(serving, "complete", {"model": "llama", "prompt": "Once upon a time", "max_tokens": 12,
                                              "ignore_eos": True})
    assert status == 200, body
    c = Completion.model_validate(body)
    expected, n_prompt = engine_text(registry, "spm", "Once upon a time", 12, ignore_eos=True)
    assert c.object == "text_completion" and c.id.startswith("cmpl-") and c.model == "llama"
    assert c.choices[0].text == expected
    assert c.choices[0].finish_reason == "length"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert body["system_fingerprint"] == "llama-host"


def test_completion_prompt_as_list_and_echo(serving):
    _, plain = call(serving, "complete", {"model": "llama", "prompt": ["Hello there"], "max_tokens": 4, "ignore_eos": True})
    _, echoed = call(serving, "complete", {"model": "llama", "prompt": "Hello there", "max_tokens": 4, "echo": True,
                                           "ignore_eos": True})
    assert echoed["choices"][0]["text"] == "Hello there" + plain["choices"][0]["text"]


def test_completion_stream_equals_non_stream(serving):
    body = {"model": "llama", "prompt": "The weather today", "max_tokens": 10, "ignore_eos": True}
    _, whole = call(serving, "complete", body)
    chunks = stream(serving, "complete", {**body, "stream": True, "stream_options": {"include_usage": True}})
    *texts, usage_chunk = chunks
    assert "".join(c["choices"][0]["text"] for c in texts) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in texts][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in texts[:-1])
    assert usage_chunk["choices"] == [] and counts(usage_chunk["usage"]) == counts(whole["usage"])
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "text_completion" for c in chunks)
    for c in chunks:  # the SDK's type has no null finish_reason, which streams send until the end
        if not c["choices"] or c["choices"][0]["finish_reason"]:
            Completion.model_validate(c)


def test_stop_string_ends_with_stop(serving, registry):
    expected, _ = engine_text(registry, "spm", "Once upon a time", 12, ignore_eos=True)
    stop = expected.strip()[2:5]  # something greedy decoding will produce
    assert stop
    _, body = call(serving, "complete", {"model": "llama", "prompt": "Once upon a time", "max_tokens": 12,
                                         "ignore_eos": True, "stop": [stop]})
    text = body["choices"][0]["text"]
    assert stop not in text and expected.startswith(text) and body["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(serving):
    body = {"model": "llama", "prompt": "Roll the dice", "max_tokens": 16, "temperature": 1.0, "seed": 1234,
            "ignore_eos": True}
    texts = {call(serving, "complete", body)[1]["choices"][0]["text"] for _ in range(2)}
    other = call(serving, "complete", {**body, "seed": 99})[1]["choices"][0]["text"]
    assert len(texts) == 1 and other not in texts


# --- chat ------------------------------------------------------------------------------------------


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]


def rendered(registry, preload: str, messages: list, template: str | None = None) -> str:
    info = registry.get(preload).model.info
    out = render_jinja2(template or info.chat_template, {"messages": messages, "add_generation_prompt": True,
                                                       "bos_token": info.bos_token, "eos_token": info.eos_token})
    assert out.text is not None, out.error
    return out.text


def test_chat_equals_the_engine_on_the_jinja2_prompt(serving, registry):
    status, body = call(serving, "chat", {"model": "llama", "messages": CHAT, "max_tokens": 8, "ignore_eos": True})
    assert status == 200, body
    c = ChatCompletion.model_validate(body)
    expected, n_prompt = engine_text(registry, "spm", rendered(registry, "spm", CHAT), 8, ignore_eos=True)
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-")
    assert c.choices[0].message.role == "assistant" and c.choices[0].message.content == expected
    assert c.choices[0].finish_reason == "length"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (n_prompt, 8)
    assert abs(c.created - __import__("time").time()) < 60


def test_chat_stream_shape(serving):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 6, "ignore_eos": True}
    _, whole = call(serving, "chat", body)
    chunks = stream(serving, "chat", {**body, "stream": True})
    first, *middle, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == whole["choices"][0]["message"]["content"]
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == first["id"] for c in chunks)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)


def test_chat_stream_include_usage(serving):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 5, "ignore_eos": True}
    _, whole = call(serving, "chat", body)
    chunks = stream(serving, "chat", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and counts(chunks[-1]["usage"]) == counts(whole["usage"])


def test_chat_content_parts_and_named_template(serving, registry):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi."}]}]
    a = call(serving, "chat", {"model": "chatml-tiny", "messages": parts, "max_tokens": 4})[1]
    b = call(serving, "chat", {"model": "chatml-tiny", "messages": [{"role": "user", "content": "Say\nhi."}],
                               "max_tokens": 4})[1]
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]


def test_apply_template(serving, registry):
    status, body = call(serving, "apply-template", {"model": "llama", "messages": CHAT})
    assert status == 200 and body == {"prompt": rendered(registry, "spm", CHAT)}


def test_apply_template_refuses_what_chat_refuses(serving):
    status, error = call(serving, "apply-template", {"model": "gpt-5", "messages": CHAT})
    assert status == 404 and "llama, tiny, chatml-tiny" in error["error"]["message"]
    status, error = call(serving, "apply-template", {"model": "llama", "messages": [{"role": "user", "content": 1}]})
    assert status == 400 and error["error"]["param"] == "messages[0].content"
    status, error = call(serving, "apply-template", b"{")
    assert status == 400 and "not valid JSON" in error["error"]["message"]


def test_json_response_format_gives_json(serving):
    status, body = call(serving, "chat", {"model": "tiny", "messages": CHAT, "max_tokens": 40,
                                          "response_format": {"type": "json_object"}})
    assert status == 200, body
    text = body["choices"][0]["message"]["content"]
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut off by max_tokens: still a prefix of an object
        assert text.lstrip().startswith("{")


# --- validation --------------------------------------------------------------------------------

M = [{"role": "user", "content": "hi"}]

INVALID_CHAT = [
    ({"model": "llama"}, "messages", "'messages' is required"),
    ({"model": "llama", "messages": []}, "messages", "at least one"),
    ({"model": "llama", "messages": "hi"}, "messages", "must be an array"),
    ({"model": "llama", "messages": [1]}, "messages[0]", "must be an object"),
    ({"model": "llama", "messages": [{"content": "x"}]}, "messages[0].role", "required"),
    ({"model": "llama", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "'wizard'"),
    ({"model": "llama", "messages": [{"role": "user"}]}, "messages[0].content", "required"),
    ({"model": "llama", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "a number"),
    ({"model": "llama", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].type", "only text"),
    ({"model": "llama", "messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name", "string"),
    ({"model": 7, "messages": M}, "model", "must be a string"),
    ({"model": "llama", "messages": M, "max_tokens": "10"}, "max_tokens", "must be an integer"),
    ({"model": "llama", "messages": M, "max_tokens": -1}, "max_tokens", "between"),
    ({"model": "llama", "messages": M, "max_completion_tokens": 1.5}, "max_completion_tokens", "integer"),
    ({"model": "llama", "messages": M, "temperature": "hot"}, "temperature", "number"),
    ({"model": "llama", "messages": M, "temperature": 3}, "temperature", "between 0 and 2"),
    ({"model": "llama", "messages": M, "top_p": 1.5}, "top_p", "between"),
    ({"model": "llama", "messages": M, "top_k": 0.5}, "top_k", "integer"),
    ({"model": "llama", "messages": M, "min_p": []}, "min_p", "number"),
    ({"model": "llama", "messages": M, "stop": 5}, "stop", "string or a list"),
    ({"model": "llama", "messages": M, "stop": ["a", 1]}, "stop", "a number"),
    ({"model": "llama", "messages": M, "seed": "x"}, "seed", "integer"),
    ({"model": "llama", "messages": M, "seed": 10**30}, "seed", "out of range"),
    ({"model": "llama", "messages": M, "presence_penalty": 9}, "presence_penalty", "between"),
    ({"model": "llama", "messages": M, "frequency_penalty": None, "repeat_penalty": "x"}, "repeat_penalty", "number"),
    ({"model": "llama", "messages": M, "logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"model": "llama", "messages": M, "logit_bias": {"5": 500}}, "logit_bias.5", "between"),
    ({"model": "llama", "messages": M, "logit_bias": [1]}, "logit_bias", "object"),
    ({"model": "llama", "messages": M, "n": 0}, "n", "between 1 and 128"),
    ({"model": "llama", "messages": M, "n": 1.5}, "n", "integer"),
    ({"model": "llama", "messages": M, "stream": "yes"}, "stream", "boolean"),
    ({"model": "llama", "messages": M, "stream_options": {"include_usage": 1}}, "stream_options.include_usage", "boolean"),
    ({"model": "llama", "messages": M, "response_format": {"type": "xml"}}, "response_format.type", "'xml'"),
    ({"model": "llama", "messages": M, "response_format": {"type": "json_schema"}}, "response_format.json_schema", "required"),
    ({"model": "llama", "messages": M, "ignore_eos": "true"}, "ignore_eos", "boolean"),
    ({"model": "llama", "messages": M, "grammar": 1}, "grammar", "string"),
    ({"model": "llama", "messages": M, "user": 1}, "user", "string"),
    ({"model": "llama", "messages": M, "logprobs": 1}, "logprobs", "must be a boolean"),
    ({"model": "llama", "messages": M, "top_logprobs": 2}, "top_logprobs", "needs 'logprobs': true"),
]


@pytest.mark.parametrize("body,param,words", INVALID_CHAT, ids=[c[1] + ":" + c[2] for c in INVALID_CHAT])
def test_invalid_chat_requests(serving, body, param, words):
    status, error = call(serving, "chat", body)
    assert status == 400, error
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param and words in error["error"]["message"], error


INVALID_BODIES = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b'{"model": "llama",}', "line 1, column 19"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b'{"model": "llama", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "invalid UTF-8"),
    (b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "deeper than 64"),
    (b'{"a": "' + b"\\" * 3 + b'"}', "not valid JSON"),
]


@pytest.mark.parametrize("raw,words", INVALID_BODIES, ids=range(len(INVALID_BODIES)))
def test_malformed_bodies(serving, raw, words):
    for command in ("chat", "complete"):
        status, error = call(serving, command, raw)
        assert status == 400 and words in error["error"]["message"], error


def test_unknown_model_is_404_naming_the_available(serving):
    status, error = call(serving, "chat", {"model": "gpt-5", "messages": M})
    assert status == 404 and error["error"]["code"] == "model_not_found"
    assert "llama, tiny, chatml-tiny" in error["error"]["message"]


def test_missing_model_uses_the_first(serving):
    status, body = call(serving, "chat", {"messages": M, "max_tokens": 2})
    assert status == 200 and body["model"] == "llama"


def test_prompt_too_long_is_400_context_length(serving):
    huge = "word " * 5000
    for command, body in (("chat", {"model": "tiny", "messages": [{"role": "user", "content": huge}]}),
                          ("complete", {"model": "tiny", "prompt": huge})):
        for streamed in (False, True):
            status, error = call(serving, command, {**body, "stream": streamed})
            assert status == 400 and error["error"]["code"] == "context_length_exceeded", error
            assert "tokens" in error["error"]["message"]


def test_huge_body_is_handled(serving):
    # 8 MiB of content: parsed and refused as too long for the context, no trap
    content = "x" * (8 << 20)
    status, error = call(serving, "complete", {"model": "tiny", "prompt": content})
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"


def test_invalid_grammar_is_400(serving):
    status, error = call(serving, "chat", {"model": "tiny", "messages": M, "grammar": "root ::= ("})
    assert status == 400 and error["error"]["code"] == "invalid_grammar" and error["error"]["param"] == "grammar"


@pytest.mark.parametrize("prompt, param, words", [
    (None, "prompt", "'prompt' is required"),
    (3, "prompt", "must be a string, a list of strings or token ids"),
    ([], "prompt", "empty list"),
    ([1, "a"], "prompt", "'prompt[1]' must be a token id"),
    ([1, 2.5], "prompt", "'prompt[1]' must be a token id"),
    ([-1], "prompt", "'prompt[0]' must be a token id"),
    ([2 ** 31], "prompt", "'prompt[0]' must be a token id"),
    ([[1], 2], "prompt", "'prompt[1]' must be a string or a list of token ids"),
    ([["a"]], "prompt", "'prompt[0][0]' must be a token id"),
    ([[]], "prompt", "'prompt[0]' must hold at least one token id"),
    ([10 ** 6], "prompt", "token id 1000000 (at position 0) is not in the model's vocabulary"),
    ([["x"] * 200], "prompt", "must be a token id"),
    (["x"] * 200, "prompt", "at most 128"),
])
def test_completion_prompt_validation(serving, prompt, param, words):
    body = {"model": "tiny"} if prompt is None else {"model": "tiny", "prompt": prompt}
    status, error = call(serving, "complete", body)
    assert status == 400 and error["error"]["param"] == param and words in error["error"]["message"], error


def test_echo_needs_a_text_prompt(serving):
    for body, param in (({"prompt": "x", "echo": 1}, "echo"), ({"prompt": [1, 2], "echo": True}, "echo")):
        status, error = call(serving, "complete", {"model": "tiny", **body})
        assert status == 400 and error["error"]["param"] == param, error


def test_serving_still_answers_after_errors(serving, registry):
    expected, _ = engine_text(registry, "tiny", "abc", 5, ignore_eos=True)
    status, body = call(serving, "complete", {"model": "tiny", "prompt": "abc", "max_tokens": 5, "ignore_eos": True})
    assert status == 200 and body["choices"][0]["text"] == expected


# --- templates ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_template_model(tmp_path_factory):
    import dataclasses

    from llama_host import modelgen

    path = tmp_path_factory.mktemp("models") / "no-template.gguf"
    modelgen.write_model(dataclasses.replace(modelgen.PRESETS["tiny"], chat_template=None), path, dtype="f32")
    preloads = parse_preloads([f"bare:GGML:CPU:{path}"])
    with ModelRegistry.load(preloads, EngineConfig(ctx_size=256, parallel=1)) as reg:
        yield reg


def test_auto_without_a_gguf_template_falls_back_to_chatml(no_template_model, caplog):
    routes = [ModelRoute.create("bare", "bare", "auto"), ModelRoute.create("bare-chatml", "bare", "chatml")]
    with Serving(no_template_model, routes) as s, caplog.at_level("WARNING", logger="llama_host.guest"):
        auto = s.call("apply-template", json.dumps({"model": "bare", "messages": CHAT}).encode())
        chatml = s.call("apply-template", json.dumps({"model": "bare-chatml", "messages": CHAT}).encode())
    assert auto.status == 200 and json.loads(auto.body) == json.loads(chatml.body)
    assert "no chat template" in caplog.text and "chatml" in caplog.text


def test_template_errors_are_400_with_the_templates_message(registry):
    routes = [
        ModelRoute("raises", "tiny", "raises", "{{ raise_exception('System messages are not supported') }}"),
        ModelRoute("undefined", "tiny", "undefined", "{{ messages[0].content.nope.deeper }}"),
        ModelRoute("broken", "tiny", "broken", "{% for m in messages %}{{ m.content }}"),
    ]
    with Serving(registry, routes) as s:
        for model, words in (("raises", "System messages are not supported"), ("undefined", "has no attribute 'nope'"),
                             ("broken", "line 1")):
            reply = s.call("chat", json.dumps({"model": model, "messages": M}).encode())
            error = json.loads(reply.body)["error"]
            assert reply.status == 400 and error["code"] == "template_error", error
            assert words in error["message"], error
