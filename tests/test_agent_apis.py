"""OpenAI's Responses API and Anthropic's Messages API end to end, with the official SDKs: a live
server, random-weight GGUFs with real templates. Each API is a translation into the same chat
request, so the oracle is chat completions itself: the same conversation gives the same prompt
(token counts) and, greedy, the same text."""

from __future__ import annotations

import dataclasses
import json

import anthropic
import httpx
import openai
import pytest

from live import Server
from llama_host import modelgen
from llama_host.vendor import chat_templates_dir

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city.", "parameters": SCHEMA}
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in RESPONSES_TOOL.items() if k != "type"}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather in a city.", "input_schema": SCHEMA}
SYSTEM, USER = "Answer briefly.", "What's the weather in Paris?"
GREEDY = dict(temperature=0)
GREEDY_EXTRA = dict(extra_body={"temperature": 0})  # (Anthropic's SDK no longer sends sampling settings)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    hermes = tmp_path_factory.mktemp("agent-models") / "hermes.gguf"
    template = (chat_templates_dir() / "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja").read_text()
    modelgen.write_model(dataclasses.replace(modelgen.PRESETS["tiny"], chat_template=template), hermes, dtype="f32")
    s = Server([f"--nn-preload=plain:GGML:CPU:{model_path('tiny')}", f"--nn-preload=hermes:GGML:CPU:{hermes}",
                "--ctx-size", "4096", "plain", "auto"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def oai(server):
    return server.client()


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)


def chat(oai, messages, **kw):
    return oai.chat.completions.create(model="plain", messages=messages, max_tokens=8, **GREEDY, **kw)


# --- Responses ------------------------------------------------------------------------------


def test_a_response_is_the_chat_completion_of_the_same_conversation(oai):
    want = chat(oai, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}])
    r = oai.responses.create(model="plain", instructions=SYSTEM, input=USER, max_output_tokens=8, **GREEDY)
    assert isinstance(r, openai.types.responses.Response) and r.object == "response"
    assert r.output_text == want.choices[0].message.content
    assert r.usage.input_tokens == want.usage.prompt_tokens and r.usage.output_tokens == want.usage.completion_tokens
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[-1].status == "incomplete"  # (the message it cut, as OpenAI marks it)
    assert (r.instructions, r.max_output_tokens, r.model) == (SYSTEM, 8, "plain")
    # input as items, content as parts: the same prompt
    items = oai.responses.create(model="plain", instructions=SYSTEM, max_output_tokens=8, **GREEDY, input=[
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": USER}]}])
    assert items.output_text == r.output_text and items.usage.input_tokens == r.usage.input_tokens


def test_an_assistant_message_last_in_the_input_is_history_not_a_prefill(oai):
    history = [{"role": "user", "content": USER}, {"role": "assistant", "content": "Let me think."}]
    want = chat(oai, history, extra_body={"add_generation_prompt": True})  # (a new assistant turn)
    r = oai.responses.create(model="plain", input=history, max_output_tokens=8, **GREEDY)
    assert r.output_text == want.choices[0].message.content
    assert r.usage.input_tokens == want.usage.prompt_tokens != chat(oai, history).usage.prompt_tokens


def test_a_function_call_round_trip_in_full_and_through_previous_response_id(oai):
    first = oai.responses.create(model="hermes", input=USER, tools=[RESPONSES_TOOL], tool_choice="required",
                                 parallel_tool_calls=False, max_output_tokens=300, temperature=1.0, extra_body={"seed": 2})
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) <= {"city"} and call.call_id
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}
    full = oai.responses.create(model="hermes", input=[{"role": "user", "content": USER}, *[o.model_dump() for o in first.output],
                                                       result], tools=[RESPONSES_TOOL], max_output_tokens=6, **GREEDY)
    chained = oai.responses.create(model="hermes", previous_response_id=first.id, input=[result], tools=[RESPONSES_TOOL],
                                   max_output_tokens=6, **GREEDY)
    assert chained.usage.input_tokens == full.usage.input_tokens and chained.output_text == full.output_text
    # the chat completion of that conversation
    want = oai.chat.completions.create(model="hermes", tools=[CHAT_TOOL], max_tokens=6, **GREEDY, messages=[
        {"role": "user", "content": USER},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"celsius": 21}'}])
    assert full.usage.input_tokens == want.usage.prompt_tokens and full.output_text == (want.choices[0].message.content or "")
    assert oai.responses.retrieve(first.id).output[0].model_dump() == first.output[0].model_dump()


def test_streamed_events_are_responses_typed_sequence(oai):
    for messages, status in (([{"role": "user", "content": USER}], "completed"),
                             ([{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}], "incomplete")):
        want = chat(oai, messages)
        assert want.choices[0].finish_reason == {"completed": "stop", "incomplete": "length"}[status]
        events = list(oai.responses.create(model="plain", input=messages, max_output_tokens=8, stream=True, **GREEDY))
        kinds = [e.type for e in events]
        assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"]
        assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                              f"response.{status}"]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = events[-1].response
        assert final.output_text == text == events[-4].text == want.choices[0].message.content
        assert final.status == status and final.usage.output_tokens == want.usage.completion_tokens
        assert final.output[-1].status == events[-2].item.status == status

    with oai.responses.stream(model="hermes", input=USER, tools=[RESPONSES_TOOL], tool_choice="required",
                              parallel_tool_calls=False, max_output_tokens=300, temperature=1.0, extra_body={"seed": 3}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = final.output
    assert call.type == "function_call" and call.arguments == arguments and json.loads(arguments).keys() <= {"city"}
    assert events[-1].type == "response.completed"


def test_text_format_json_schema_constrains_the_output(oai):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    r = oai.responses.create(model="plain", input=USER, max_output_tokens=60, temperature=1.0, extra_body={"seed": 1},
                             text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    assert isinstance(json.loads(r.output_text)["ok"], bool)


@pytest.mark.parametrize("extra, param", [
    ({"background": True}, "background"),
    ({"previous_response_id": "resp_nowhere"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "computer_call"}]}, "input[0].type"),
    ({"input": 5}, "input"),
    ({"max_output_tokens": "ten"}, "max_output_tokens"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "x" * 65, "schema": {}}}}, "text.format.name"),
    # (the guest checks the chat request they become: its errors name the Responses fields)
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": []}, "input"),
    # (metadata is kept with the answer: OpenAI's 16 string pairs; 15 MB of [] once held 350 MB each)
    ({"metadata": {"k": [[]] * 1000}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
])
def test_what_cannot_be_honoured_is_a_400_naming_its_field(oai, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(**{"model": "plain", "input": USER, **extra})
    assert e.value.body["param"] == param, e.value.body


def test_responses_are_served_without_the_v1_prefix_too(server):
    r = httpx.post(server.url + "/responses", json={"model": "plain", "input": USER, "max_output_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "response"


def test_a_stored_answer_echoes_what_was_understood_not_what_was_sent(oai):
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    r = oai.responses.create(model="plain", input=USER, max_output_tokens=2, metadata={"user": "u1"},
                             text={"format": {"type": "json_object"}, "junk": "x" * 1000},
                             reasoning={"effort": "low", "junk": [1] * 1000}, tools=[{**tool, "junk": [1] * 1000}])
    for answer in (r, oai.responses.retrieve(r.id)):
        assert answer.metadata == {"user": "u1"} and answer.text.format.type == "json_object"
        assert [t.model_dump(exclude_none=True) for t in answer.tools] == [tool]
        assert answer.model_dump(exclude_none=True)["text"] == {"format": {"type": "json_object"}}
        assert answer.model_dump(exclude_none=True)["reasoning"] == {"effort": "low"}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses", "/embeddings", "/tokenize"])  # (/completions: the guest)
def test_a_body_of_millions_of_arrays_is_refused_before_the_host_parses_it(server, path):
    # orjson holds the GIL while it parses: 5 million [] on these routes stopped every client 3-6 s
    body = b'{"model": "plain", "max_tokens": 1, "messages": [], "content": "x", "metadata": {"k": [' + \
        b"[]," * (1 << 20) + b"[]]}}"
    r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text[:300]
    assert "more than 1048576 arrays and objects" in json.dumps(r.json()), r.text[:300]
    assert server.healthy()


def test_store_false_keeps_nothing(oai):
    r = oai.responses.create(model="plain", input=USER, max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="plain", input=USER, previous_response_id=r.id, max_output_tokens=2)


# --- Anthropic Messages ---------------------------------------------------------------------


def test_a_message_is_the_chat_completion_of_the_same_conversation(oai, claude):
    want = chat(oai, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}])
    m = claude.messages.create(model="plain", system=SYSTEM, max_tokens=8, messages=[{"role": "user", "content": USER}],
                               **GREEDY_EXTRA)
    assert isinstance(m, anthropic.types.Message) and m.stop_reason == "max_tokens"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == want.choices[0].message.content
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == want.usage.prompt_tokens
    assert m.usage.output_tokens == 8
    count = claude.messages.count_tokens(model="plain", system=[{"type": "text", "text": SYSTEM}],
                                         messages=[{"role": "user", "content": [{"type": "text", "text": USER}]}])
    assert count.input_tokens == want.usage.prompt_tokens


def test_tool_use_and_tool_result_round_trip(oai, claude):
    first = claude.messages.create(model="hermes", max_tokens=300, extra_body={"seed": 4}, messages=[{"role": "user", "content": USER}],
                                   tools=[ANTHROPIC_TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) <= {"city"}
    history = [{"role": "user", "content": USER}, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}]}]
    second = claude.messages.create(model="hermes", max_tokens=6, messages=history, tools=[ANTHROPIC_TOOL], **GREEDY_EXTRA)
    want = oai.chat.completions.create(model="hermes", tools=[CHAT_TOOL], max_tokens=6, **GREEDY, messages=[
        {"role": "user", "content": USER},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": use.id, "type": "function", "function": {"name": use.name, "arguments": json.dumps(use.input)}}]},
        {"role": "tool", "tool_call_id": use.id, "content": "21 C"}])
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == want.usage.prompt_tokens
    assert "".join(b.text for b in second.content if b.type == "text") == (want.choices[0].message.content or "")


def test_streamed_events_are_anthropics(server, claude):
    with claude.messages.stream(model="hermes", max_tokens=300, extra_body={"seed": 5}, messages=[{"role": "user", "content": USER}],
                                tools=[ANTHROPIC_TOOL], tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert final.usage.output_tokens > 0
    # message_start tells the input tokens, as Anthropic's does (it said 0; clients read it there)
    whole = claude.messages.create(model="plain", max_tokens=3, messages=[{"role": "user", "content": USER}])
    with claude.messages.stream(model="plain", max_tokens=3, messages=[{"role": "user", "content": USER}]) as stream:
        start = next(iter(stream))
    used = start.message.usage
    assert used.input_tokens + used.cache_read_input_tokens == whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    assert used.input_tokens > 0
    body = {"model": "plain", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": USER}]}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as r:
        kinds = [line.removeprefix("event: ") for line in r.iter_lines() if line.startswith("event: ")]
    assert kinds == ["message_start", "ping", "content_block_start", *["content_block_delta"] * (len(kinds) - 6),
                     "content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize("body, error", [
    ({"messages": [{"role": "user", "content": "hi"}]}, anthropic.BadRequestError),  # no max_tokens
    ({"max_tokens": 5, "messages": []}, anthropic.BadRequestError),
    ({"max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]}, anthropic.BadRequestError),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, anthropic.BadRequestError),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search_20250305",
                                                                                     "name": "web_search"}]},
     anthropic.BadRequestError),
    ({"max_tokens": 5, "model": "nope", "messages": [{"role": "user", "content": "hi"}]}, anthropic.NotFoundError),
])
def test_errors_come_in_anthropics_shape(server, claude, body, error):
    with pytest.raises(error) as e:
        claude.post("/v1/messages", cast_to=anthropic.types.Message, body={"model": "plain", **body})
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] in ("invalid_request_error", "not_found_error")
    assert e.value.body["error"]["message"]
    assert server.healthy()


def test_the_api_key_is_taken_from_x_api_key_as_anthropics_sdk_sends_it(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--api-key", "sekrit", "default", "auto"])
    try:
        args = dict(model="default", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert anthropic.Anthropic(base_url=s.url, api_key="sekrit", max_retries=0).messages.create(**args).content
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=s.url, api_key="wrong", max_retries=0).messages.create(**args)
    finally:
        assert s.stop() == 0, s.output


# --- hostile bodies -------------------------------------------------------------------------

WRONG = [None, True, 7, -1, 1.5, "x", [], [1], [None], {}, {"type": 5}, [{"type": "text"}], [{"type": None, "role": 3}]]
RESPONSES_FIELDS = ["input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
                    "parallel_tool_calls", "text", "reasoning", "previous_response_id", "store", "stream", "metadata"]
MESSAGES_FIELDS = ["messages", "system", "max_tokens", "temperature", "top_p", "top_k", "tools", "tool_choice",
                   "thinking", "stop_sequences", "stream", "output_config", "metadata"]


@pytest.mark.parametrize("path, base, fields", [
    ("/v1/responses", {"model": "hermes", "input": USER, "max_output_tokens": 1}, RESPONSES_FIELDS),
    ("/v1/messages", {"model": "hermes", "max_tokens": 1, "messages": [{"role": "user", "content": USER}]}, MESSAGES_FIELDS),
    ("/v1/messages/count_tokens", {"model": "hermes", "messages": [{"role": "user", "content": USER}]}, MESSAGES_FIELDS),
])
def test_wrong_values_in_every_field_are_answered_never_a_500(server, path, base, fields):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for body in (b"[", b"null", b'"text"', b"[" * 10_000 + b"]" * 10_000):
            assert http.post(path, content=body).status_code == 400
        for name in fields:
            for value in WRONG:
                r = http.post(path, json={**base, name: value})
                assert r.status_code in (200, 400), (name, value, r.status_code, r.text)
                if r.status_code == 400 and path != "/v1/responses":
                    assert r.json()["type"] == "error", r.text
    assert server.healthy()
