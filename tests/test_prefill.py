"""Prefill: a chat request whose last message is an assistant message with text continues that
message (vLLM's `continue_final_message`, llama-server's assistant prefill). Driven through a live
server; the prompts are checked against jinja2 rendering the same templates."""

from __future__ import annotations

import dataclasses

import httpx
import openai
import pytest

from jinja_oracle import render_jinja2
from live import Server
from llama_host import modelgen
from llama_host.engine.model import Model

UPPER = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | upper }}<|end|>{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TEMPLATES = {
    "chatml": None,  # the tiny preset's own (Hugging Face ChatML: content verbatim)
    "llama2": modelgen.PRESETS["spm"].chat_template,  # content.strip(), then ' </s>'
    "qwen": "file:Qwen-Qwen2.5-7B-Instruct.jinja",  # a real template, tool calls included
    "upper": UPPER,  # changes the content, so it cannot be continued
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_path):
    folder = tmp_path_factory.mktemp("prefill-models")
    paths = {}
    for name, template in TEMPLATES.items():
        if template is None:
            paths[name] = model_path("tiny")
        else:
            paths[name] = folder / f"{name}.gguf"
            modelgen.write_model(dataclasses.replace(modelgen.PRESETS["tiny"], chat_template=template), paths[name],
                                 dtype="f32")
    return paths


@pytest.fixture(scope="module")
def server(models):
    s = Server([*(f"--nn-preload={n}:GGML:CPU:{p}" for n, p in models.items()), "--ctx-size", "1024",
                "chatml", "auto"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def vocab(models):
    opened = {n: Model(p, vocab_only=True) for n, p in models.items()}
    yield opened
    for m in opened.values():
        m.close()


def expected(vocab, model: str, messages: list[dict], add_generation_prompt: bool) -> str:
    info = vocab[model].info
    return render_jinja2(vocab[model].info.chat_template, {
        "messages": messages, "add_generation_prompt": add_generation_prompt,
        "bos_token": info.bos_token or "", "eos_token": info.eos_token or ""}).text


def continued(rendered: str, content: str) -> str:
    """transformers' continue_final_message (what vLLM does): cut after the last occurrence of the
    content, trimmed; its trailing whitespace kept where the template kept it."""
    at = rendered.rindex(content.strip())
    full = content.lstrip()
    return rendered[:at + (len(full) if rendered[at:at + len(full)] == full else len(content.strip()))]


def apply(server, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/apply-template", json=body)


def prompt(server, model: str, messages: list[dict], **fields) -> str:
    r = apply(server, {"model": model, "messages": messages, **fields})
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def talk(answer: str) -> list[dict]:
    # the user's words hold the answer too: the cut is after its LAST occurrence
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say: The answer is 42."},
            {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("model", ["chatml", "llama2", "qwen"])
@pytest.mark.parametrize("answer", ["The answer is", "The answer is ", "The answer is\n", "  The answer\nis", "42"])
def test_a_final_assistant_message_is_continued(server, vocab, model, answer):
    messages = talk(answer)
    want = continued(expected(vocab, model, messages, False), answer)
    assert not want.endswith(("<|im_end|>", "</s>", "<|im_end|>\n"))
    assert prompt(server, model, messages) == want
    assert prompt(server, model, messages, continue_final_message=True) == want
    assert prompt(server, model, messages, add_generation_prompt=False) == want
    assert prompt(server, model, messages, continue_final_message=True, add_generation_prompt=False) == want


def test_the_cut_is_exact(server):
    p = prompt(server, "chatml", talk("The answer is"))
    assert p.endswith("<|im_start|>assistant\nThe answer is") and p.count("<|im_start|>assistant") == 1
    # a trailing space the template keeps is kept; one it trims is not invented
    assert prompt(server, "chatml", talk("The answer is ")).endswith("\nThe answer is ")
    assert prompt(server, "llama2", talk("The answer is\n")).endswith("[/INST] The answer is")


def test_text_parts_are_continued_as_joined(server, vocab):
    parts = [{"type": "text", "text": "The answer"}, {"type": "text", "text": "is"}]
    messages = talk("The answer\nis")
    assert prompt(server, "chatml", [*messages[:-1], {"role": "assistant", "content": parts}]) == continued(
        expected(vocab, "chatml", messages, False), "The answer\nis")


@pytest.mark.parametrize("model", ["chatml", "qwen"])
def test_a_new_turn_when_asked_or_nothing_to_continue(server, vocab, model):
    messages = talk("The answer is 42.")
    new_turn = expected(vocab, model, messages, True)
    assert prompt(server, model, messages, add_generation_prompt=True) == new_turn
    assert prompt(server, model, messages, continue_final_message=False) == new_turn
    assert prompt(server, model, messages, continue_final_message=False, add_generation_prompt=True) == new_turn
    # both false: the conversation rendered closed, no generation prompt
    assert prompt(server, model, messages, continue_final_message=False,
                  add_generation_prompt=False) == expected(vocab, model, messages, False)
    for empty in ("", "  \n"):
        blank = [*messages[:-1], {"role": "assistant", "content": empty}]
        assert prompt(server, model, blank) == expected(vocab, model, blank, True)
    # a last user message: add_generation_prompt false renders without the generation prompt, as asked
    asked = messages[:2]
    assert prompt(server, model, asked) == expected(vocab, model, asked, True)
    assert prompt(server, model, asked, add_generation_prompt=False) == expected(vocab, model, asked, False)
    assert prompt(server, model, asked, continue_final_message=False) == expected(vocab, model, asked, True)


def test_tool_calls_without_content_are_not_continued(server, vocab):
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
    messages = [{"role": "user", "content": "What time is it?"}, {"role": "assistant", "content": None, "tool_calls": calls}]
    # the template gets the arguments decoded, as llama-server gives them
    decoded = [messages[0], {**messages[1], "tool_calls": [{**calls[0], "function": {"name": "get_time", "arguments": {}}}]}]
    want = expected(vocab, "qwen", decoded, True)
    assert want.endswith("<|im_start|>assistant\n")
    assert prompt(server, "qwen", messages) == want
    assert prompt(server, "qwen", [*messages[:1], {"role": "assistant", "tool_calls": calls}]) == want


@pytest.mark.parametrize("model", ["chatml", "llama2"])
def test_chat_completion_continues_with_exact_usage(server, vocab, model):
    messages = talk("The answer is")
    want = continued(expected(vocab, model, messages, False), "The answer is")
    for stream in (False, True):
        body = {"model": model, "messages": messages, "max_tokens": 3, "extra_body": {"ignore_eos": True}}
        if stream:
            chunks = list(server.client().chat.completions.create(**body, stream=True,
                                                                  stream_options={"include_usage": True}))
            usage = chunks[-1].usage
        else:
            r = server.client().chat.completions.create(**body)
            assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "length"
            usage = r.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (len(vocab[model].tokenize(want)), 3)


REFUSED = [
    ({"continue_final_message": "yes"}, talk("Hi"), "continue_final_message"),
    ({"continue_final_message": 1}, talk("Hi"), "continue_final_message"),
    ({"add_generation_prompt": "false"}, talk("Hi"), "add_generation_prompt"),
    ({"add_generation_prompt": 0}, talk("Hi")[:2], "add_generation_prompt"),
    ({"continue_final_message": True}, talk("Hi")[:2], "continue_final_message"),
    ({"continue_final_message": True}, [*talk("Hi"), {"role": "tool", "content": "x"}], "continue_final_message"),
    ({"continue_final_message": True}, talk(""), "continue_final_message"),
    ({"continue_final_message": True, "add_generation_prompt": True}, talk("Hi"), "add_generation_prompt"),
    ({"continue_final_message": True, "add_generation_prompt": True}, talk("Hi")[:2], "add_generation_prompt"),
]


@pytest.mark.parametrize("fields,messages,param", REFUSED)
def test_refused_with_the_param(server, fields, messages, param):
    r = apply(server, {"model": "chatml", "messages": messages, **fields})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="chatml", messages=messages, max_tokens=2, extra_body=fields)
    assert e.value.body["param"] == param


def test_a_template_that_changes_the_content_cannot_be_continued(server):
    messages = talk("The answer is")
    r = apply(server, {"model": "upper", "messages": messages})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert "verbatim" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="upper", messages=messages, max_tokens=2)
    assert e.value.body["param"] == "messages"
    # a new turn after it is fine
    assert prompt(server, "upper", messages, continue_final_message=False).endswith(
        "<|assistant|>THE ANSWER IS<|end|><|assistant|>")
