"""Tool calls and reasoning end to end: real chat templates (llama.cpp's models/templates) in
random-weight GGUFs, a live server, the openai SDK and LangChain. Templates render tools and tool
results as jinja2 does with the same context; a required or named tool_choice always yields calls
that parse and fit their schemas, streamed and not."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

import jinja_oracle
from jinja_oracle import TOOLS, render_jinja2
from live import Server
from llama_host import modelgen
from llama_host.engine.model import Model
from llama_host.vendor import REPO_ROOT, chat_templates_dir

# model id -> the real template it carries, and the call format the guest should find in it
TEMPLATES = {
    "hermes": "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    "qwen25": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwen3": "Qwen-Qwen3-0.6B.jinja",
    "llama31": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "llama32": "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "mistral32": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "coder": "Qwen3-Coder.jinja",
    "r1": "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "plain": None,  # the tiny preset's ChatML: no tool format (the generic JSON envelope)
}
WEATHER, SEARCH = TOOLS
USER = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_path):
    folder = tmp_path_factory.mktemp("tool-models")
    paths = {}
    for name, file in TEMPLATES.items():
        if file is None:
            paths[name] = model_path("tiny")
            continue
        template = (chat_templates_dir() / file).read_text(encoding="utf-8")
        paths[name] = folder / f"{name}.gguf"
        modelgen.write_model(dataclasses.replace(modelgen.PRESETS["tiny"], chat_template=template), paths[name],
                             dtype="f32")
    # ChatML by default, Hermes's tool_use template beside it (tokenizer.chat_template.tool_use)
    paths["variant"] = folder / "variant.gguf"
    modelgen.write_model(dataclasses.replace(modelgen.PRESETS["tiny"], tool_use_template=f"file:{TEMPLATES['hermes']}"),
                         paths["variant"], dtype="f32")
    return paths


@pytest.fixture(scope="module")
def server(models):
    s = Server([*(f"--nn-preload={n}:GGML:CPU:{p}" for n, p in models.items()), "--ctx-size", "4096",
                "--parallel", "2", "plain", "auto"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def infos(models):
    out = {}
    for name, path in models.items():
        with Model(path, vocab_only=True) as m:
            out[name] = m.info
    return out


def wire(messages: list[dict]) -> list[dict]:
    """Messages as an OpenAI client sends them: each call's arguments a JSON string."""
    out = []
    for m in messages:
        if "tool_calls" in m:
            m = {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                                     for c in m["tool_calls"]]}
        out.append(m)
    return out


ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris, and search llamas."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call67890", "type": "function", "function": {"name": "search", "arguments": {"query": "llamas", "limit": 3}}},
    ]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21}'},
    {"role": "tool", "tool_call_id": "call67890", "name": "search", "content": "Llamas are camelids."},
]


GENERIC = {"r1", "plain"}  # templates with no tool format: the tools are described in a system message


@pytest.mark.parametrize("model", [m for m in TEMPLATES if m != "plain"])
@pytest.mark.parametrize("conversation", ["offered", "round-trip"])
def test_tools_and_results_render_as_jinja2_with_decoded_arguments(server, infos, model, conversation, monkeypatch):
    messages = USER if conversation == "offered" else ROUND_TRIP
    if model.startswith("llama") and conversation == "round-trip":  # its template takes one call per message
        messages = [messages[0], {**messages[1], "tool_calls": messages[1]["tool_calls"][:1]}, messages[2]]
    body = {"model": model, "messages": wire(messages), "tools": TOOLS}
    if model in GENERIC:
        if conversation == "offered":  # described where the template cannot show them
            prompt = httpx.post(server.url + "/v1/apply-template", json=body).json()["prompt"]
            assert all(json.dumps(t["function"]["parameters"], separators=(",", ":")) in prompt for t in TOOLS)
            return
        body["tool_choice"] = "none"  # then the tools are not offered: the history alone is rendered
    info = infos[model]
    monkeypatch.setattr(jinja_oracle, "NOW", time.time())  # strftime_now: the server's clock
    want = render_jinja2(info.chat_template, {
        "messages": messages, "add_generation_prompt": True, "enable_thinking": True,
        **({"tools": TOOLS} if body.get("tool_choice") != "none" else {}),
        "bos_token": info.bos_token or "", "eos_token": info.eos_token or ""})
    r = httpx.post(server.url + "/v1/apply-template", json=body)
    assert want.text is not None, want.error
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == want.text


def test_the_ggufs_tool_use_variant_renders_requests_with_tools(server, infos):
    info = infos["variant"]
    assert info.tool_use_template and info.tool_use_template != info.chat_template
    context = {"messages": USER, "add_generation_prompt": True, "enable_thinking": True,
               "bos_token": info.bos_token or "", "eos_token": info.eos_token or ""}
    body = {"model": "variant", "messages": USER}
    with_tools = httpx.post(server.url + "/v1/apply-template", json={**body, "tools": TOOLS}).json()["prompt"]
    assert with_tools == render_jinja2(info.tool_use_template, {**context, "tools": TOOLS}).text
    assert httpx.post(server.url + "/v1/apply-template", json=body).json()["prompt"] == render_jinja2(
        info.chat_template, context).text
    r = server.client().chat.completions.create(model="variant", messages=USER, tools=SHORT, tool_choice="required",
                                                max_tokens=1000, temperature=1.0, seed=1)
    assert r.choices[0].finish_reason == "tool_calls"  # the variant's format: Hermes


def test_reasoning_effort_none_turns_thinking_off(server, infos):
    info = infos["qwen3"]
    want = render_jinja2(info.chat_template, {"messages": USER, "add_generation_prompt": True, "enable_thinking": False,
                                              "bos_token": info.bos_token or "", "eos_token": info.eos_token or ""})
    for extra in ({"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}):
        got = httpx.post(server.url + "/v1/apply-template", json={"model": "qwen3", "messages": USER, **extra}).json()
        assert got["prompt"] == want.text and got["prompt"].endswith("<think>\n\n</think>\n\n")


# --- constrained calls ----------------------------------------------------------------------


# Tools with bounded values: a random-weight model writes strings until it is stopped, and a
# call cut by max_tokens is no call.
SHORT = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web.", "parameters": {
        "type": "object", "properties": {"query": {"type": "string", "maxLength": 8}, "limit": {"type": "integer"}},
        "required": ["query"]}}},
]


def check_call(call, tools=SHORT) -> dict:
    """The call names an offered tool and its arguments fit that tool's schema."""
    assert call.type == "function" and call.id
    tool = next(t["function"] for t in tools if t["function"]["name"] == call.function.name)
    args = json.loads(call.function.arguments)
    schema = tool["parameters"]
    assert set(schema.get("required", [])) <= args.keys() <= schema["properties"].keys(), args
    kinds = {"string": str, "integer": int, "array": list}
    for key, value in args.items():
        prop = schema["properties"][key]
        if "enum" in prop:
            assert value in prop["enum"]
        else:
            assert isinstance(value, kinds[prop["type"]]) and not isinstance(value, bool), (key, value)
        if prop["type"] == "array":
            assert all(isinstance(v, str) for v in value)
    return args


FORMATS = ["hermes", "qwen3", "llama31", "nemo", "mistral32", "coder", "plain"]


@pytest.mark.parametrize("model", FORMATS)
def test_required_tool_choice_yields_valid_calls(server, model):
    client = server.client()
    for seed in (1, 2):
        r = client.chat.completions.create(model=model, messages=USER, tools=SHORT, tool_choice="required",
                                           max_tokens=1000, temperature=1.0, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message.content
        assert choice.message.tool_calls and choice.message.content in (None, "")
        for call in choice.message.tool_calls:
            check_call(call)


@pytest.mark.parametrize("model", ["hermes", "llama31", "mistral32", "coder", "plain"])
def test_a_named_tool_is_the_one_called_and_streams_in_openai_shape(server, model):
    client = server.client()
    args = dict(model=model, messages=USER, tools=SHORT, max_tokens=1000, temperature=0.8, seed=3,
                tool_choice={"type": "function", "function": {"name": "search"}}, parallel_tool_calls=False)
    whole = client.chat.completions.create(**args).choices[0]
    assert [c.function.name for c in whole.message.tool_calls] == ["search"]
    check_call(whole.message.tool_calls[0])
    chunks = list(client.chat.completions.create(**args, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first = calls[0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", "search", "")
    assert first.id
    assert "".join(tc.function.arguments for tc in calls) == whole.message.tool_calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("model, marker", [("hermes", "<tool_call>"), ("llama31", "{"), ("mistral32", "[TOOL_CALLS]"),
                                           ("coder", "<tool_call>")])
def test_auto_leaves_text_free_until_a_call_starts(server, model, marker):
    """`auto` is a lazy grammar: a model that writes no call marker writes what it likes (the
    grammar from the first token would have forced a call)."""
    m = server.client().chat.completions.create(model=model, messages=USER, tools=SHORT, tool_choice="auto",
                                                max_tokens=12, temperature=1.0, seed=4).choices[0]
    text = m.message.content
    assert m.finish_reason == "length" and text and not m.message.tool_calls
    assert not (text.startswith(marker) or marker.startswith(text)), text


def test_a_forced_hermes_call_in_auto_is_parsed(server):
    """The issue's case: output forced (through `grammar`) to a Hermes call comes back as tool_calls."""
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    grammar = "root ::= " + json.dumps("I will check. " + text)
    client = server.client()
    for stream in (False, True):
        args = dict(model="hermes", messages=USER, tools=TOOLS, max_tokens=100, extra_body={"grammar": grammar})
        if not stream:
            m = client.chat.completions.create(**args).choices[0]
            assert m.finish_reason == "tool_calls" and m.message.content == "I will check. "
            [call] = m.message.tool_calls
        else:
            chunks = list(client.chat.completions.create(**args, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "I will check. "
            [call] = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or []) if tc.id]
            call.function.arguments = "".join(tc.function.arguments for c in chunks if c.choices
                                              for tc in (c.choices[0].delta.tool_calls or []))
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_reasoning_is_split_from_the_content(server):
    client = server.client()
    grammar = "root ::= " + json.dumps("<think>plan it</think>\n\nThe answer.")
    args = dict(model="plain", messages=USER, max_tokens=100, extra_body={"grammar": grammar})
    m = client.chat.completions.create(**args).choices[0].message
    assert m.content == "The answer." and m.model_extra["reasoning_content"] == "plan it"
    chunks = list(client.chat.completions.create(**args, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "plan it"
    assert "".join(d.content or "" for d in deltas) == "The answer."


def test_reasoning_format_none_leaves_the_think_block_in_the_content(server):
    grammar = "root ::= " + json.dumps("<think>plan it</think>The answer.")
    m = server.client().chat.completions.create(model="plain", messages=USER, max_tokens=100, extra_body={
        "grammar": grammar, "reasoning_format": "none"}).choices[0].message
    assert m.content == "<think>plan it</think>The answer." and "reasoning_content" not in (m.model_extra or {})


def test_a_template_that_opens_think_starts_in_reasoning(server):
    grammar = "root ::= " + json.dumps("thinking...</think>Done.")
    m = server.client().chat.completions.create(model="r1", messages=USER, max_tokens=50,
                                                extra_body={"grammar": grammar}).choices[0].message
    assert (m.content, m.model_extra["reasoning_content"]) == ("Done.", "thinking...")


def test_malformed_call_is_plain_content_never_a_500(server):
    text = '<tool_call>{"name": "get_weather", "arguments": {oops}}</tool_call>'
    m = server.client().chat.completions.create(model="hermes", messages=USER, tools=TOOLS, max_tokens=100,
                                                extra_body={"grammar": "root ::= " + json.dumps(text)}).choices[0]
    assert m.finish_reason == "stop" and m.message.content == text and not m.message.tool_calls


def test_round_trip_with_the_openai_sdk(server):
    client = server.client()
    first = client.chat.completions.create(model="qwen25", messages=USER, tools=SHORT, tool_choice="required",
                                           max_tokens=1000, temperature=0.7, seed=5).choices[0].message
    assert first.tool_calls
    messages = [*USER, first.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": '{"ok": true}'} for c in first.tool_calls]
    second = client.chat.completions.create(model="qwen25", messages=messages, tools=TOOLS, max_tokens=5)
    assert second.choices[0].message.role == "assistant"
    prompt = httpx.post(server.url + "/v1/apply-template", json={"model": "qwen25", "messages": messages,
                                                                 "tools": TOOLS}).json()["prompt"]
    # Qwen 2.5 renders the arguments object, not the wire's JSON string
    assert json.dumps(json.loads(first.tool_calls[0].function.arguments), ensure_ascii=False) in prompt


def test_langchain_bind_tools_and_structured_output(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        """The weather in a city."""

        city: str = Field(max_length=8)  # bounded: a random model's strings go on
        celsius: int

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="none", model="hermes", max_tokens=1000, temperature=0.7,
                     seed=11, max_retries=0)
    ai = llm.bind_tools([Weather], tool_choice="any").invoke("Weather in Paris?")
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "Weather"
    assert isinstance(ai.tool_calls[0]["args"]["city"], str) and isinstance(ai.tool_calls[0]["args"]["celsius"], int)
    result = llm.with_structured_output(Weather, method="function_calling").invoke("Weather in Paris?")
    assert isinstance(result, Weather)


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, param", [
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": [1]}, "tools[0]"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "a", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"reasoning_effort": "max"}, "reasoning_effort"),
    ({"reasoning_format": "xml"}, "reasoning_format"),
    ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "a", "arguments": 3}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]}, "messages[0].tool_calls[0].function"),
])
def test_bad_tool_requests_are_400_naming_the_field(server, extra, param):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "hermes", "messages": USER, "max_tokens": 2, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert server.healthy()


def test_the_parser_unit_tests_pass():
    """guest/src/toolcall.zig's own tests: every cut of recorded outputs of each format into
    stream pieces gives the same content, reasoning and calls."""
    run = subprocess.run([sys.executable, "-m", "ziglang", "build", "test", "--summary", "none"], cwd=REPO_ROOT / "guest",
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
