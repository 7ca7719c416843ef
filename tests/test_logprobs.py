"""Log-probabilities in OpenAI's chat and legacy completions shapes, streamed and not, checked
against an independent computation: llama-cpp-python's ``Llama`` (``logits_all=True``) on the
same model, same attention kernel."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from llama_cpp import Llama

from live import Server

PROMPT = "The capital of France is"
M = [{"role": "user", "content": "Name three colours."}]
N_BATCH = 64


@pytest.fixture(scope="module")
def spm(model_path):
    return str(model_path("spm"))


@pytest.fixture(scope="module")
def server(spm):
    s = Server([f"--nn-preload=default:GGML:CPU:{spm}", "--ctx-size", "512", "--parallel", "2",
                "--batch-size", str(N_BATCH), "default", "chatml"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def oracle(spm):
    # flash attention on, as llama.cpp picks it for the server's CPU context
    llm = Llama(spm, n_ctx=512, n_batch=N_BATCH, n_threads=2, flash_attn=True, logits_all=True, verbose=False)
    yield llm
    llm.close()


def test_completion_logprobs_with_echo_equal_llama_cpp_python(server, oracle):
    ours = server.client().completions.create(model="default", prompt=PROMPT, max_tokens=8, temperature=0,
                                              logprobs=3, echo=True).choices[0]
    theirs = oracle.create_completion(PROMPT, max_tokens=8, temperature=0, logprobs=3, echo=True)["choices"][0]
    assert ours.text == theirs["text"]
    a, b = ours.logprobs, theirs["logprobs"]
    assert a.tokens == b["tokens"] and len(a.tokens) > len(oracle.tokenize(PROMPT.encode(), add_bos=False))
    # Theirs has no logprob for the first prompt token; ours has one: the model puts a BOS before it.
    assert b["token_logprobs"][0] is None and a.token_logprobs[0] < 0
    assert a.token_logprobs[1:] == pytest.approx([float(x) for x in b["token_logprobs"][1:]], abs=1e-3)
    for mine, their in zip(a.top_logprobs[1:], b["top_logprobs"][1:]):
        # theirs: the 3 most likely and the chosen token
        best = dict(sorted(their.items(), key=lambda kv: -kv[1])[:3])
        assert mine.keys() == best.keys() and list(mine.values()) == sorted(mine.values(), reverse=True)
        assert list(mine.values()) == pytest.approx([float(best[k]) for k in mine], abs=1e-3)
    # text_offset: characters into prompt + completion (generated tokens start after the prompt)
    n_prompt = len(a.tokens) - 8
    assert a.text_offset[n_prompt] == len(PROMPT)
    assert all(a.text_offset[i + 1] == a.text_offset[i] + len(a.tokens[i]) for i in range(n_prompt, len(a.tokens) - 1))


def test_completion_logprobs_without_echo_cover_the_generated_tokens(server):
    r = server.client().completions.create(model="default", prompt=PROMPT, max_tokens=6, temperature=0,
                                           logprobs=0, extra_body={"ignore_eos": True}).choices[0]
    assert len(r.logprobs.tokens) == 6 and r.logprobs.top_logprobs == [{}] * 6
    assert r.logprobs.text_offset[0] == len(PROMPT)
    assert all(x < 0 for x in r.logprobs.token_logprobs)


def _joined(entries) -> str:
    return b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")


def test_chat_logprobs_parse_in_the_sdk_and_match_the_text(server):
    r = server.client().chat.completions.create(model="default", messages=M, max_tokens=10, temperature=0,
                                                logprobs=True, top_logprobs=2)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert isinstance(content[0], openai.types.chat.ChatCompletionTokenLogprob)
    assert len(content) == r.usage.completion_tokens and _joined(content) == choice.message.content
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        # greedy: the chosen token is the most likely one
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob)


def test_chat_logprobs_equal_those_of_the_same_prompt_as_a_completion(server):
    client = server.client()
    chat = client.chat.completions.create(model="default", messages=M, max_tokens=8, temperature=0, logprobs=True,
                                          top_logprobs=1).choices[0].logprobs.content
    prompt = httpx.post(server.url + "/v1/apply-template", json={"model": "default", "messages": M}).json()["prompt"]
    text = client.completions.create(model="default", prompt=prompt, max_tokens=8, temperature=0,
                                     logprobs=1).choices[0].logprobs
    assert [e.token for e in chat] == text.tokens
    assert [e.logprob for e in chat] == pytest.approx(text.token_logprobs, abs=1e-6)


def test_logprobs_at_a_temperature_are_of_the_model_not_the_sampler(server):
    """The documented choice: raw model log-probabilities, whatever the sampling settings."""
    client = server.client()
    args = dict(model="default", prompt=PROMPT, max_tokens=1, logprobs=5)
    greedy = client.completions.create(**args, temperature=0).choices[0].logprobs.top_logprobs[0]
    hot = client.completions.create(**args, temperature=1.7, seed=3, extra_body={"top_k": 3}).choices[0].logprobs.top_logprobs[0]
    assert hot == pytest.approx(greedy, abs=1e-6)


def test_streamed_logprobs_equal_the_whole_answer(server):
    client = server.client()
    args = dict(model="default", messages=M, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**args).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == _joined(whole)

    args = dict(model="default", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2, echo=True)
    legacy = client.completions.create(**args).choices[0].logprobs
    parts = [c.choices[0].logprobs for c in client.completions.create(**args, stream=True) if c.choices[0].logprobs]
    assert sum((p.tokens for p in parts), []) == legacy.tokens
    assert sum((p.token_logprobs for p in parts), []) == legacy.token_logprobs
    assert sum((p.text_offset for p in parts), []) == legacy.text_offset
    assert sum((p.top_logprobs for p in parts), []) == legacy.top_logprobs


def test_tokens_cut_by_a_stop_string_have_no_logprobs(server):
    client = server.client()
    args = dict(model="default", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=1,
                extra_body={"ignore_eos": True})
    full = client.completions.create(**args).choices[0]
    stop = full.text[6:9]
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(**args, stop=[stop], stream=True))
            text = "".join(c.choices[0].text for c in chunks)
            tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
        else:
            cut = client.completions.create(**args, stop=[stop]).choices[0]
            text, tokens = cut.text, cut.logprobs.tokens
        assert text == full.text[: full.text.index(stop)]
        assert text.startswith("".join(tokens)) and stop not in "".join(tokens)
        assert tokens == full.logprobs.tokens[: len(tokens)]


def test_token_ids_are_the_tokens_llama_cpp_python_generates(server, oracle):
    """vLLM's ``return_token_ids``: each choice's generated ids, the same greedy tokens as
    ``Llama.generate``; the log-probability entries carry the same ids (as llama-server's do)."""
    n = 8
    want = []
    for token in oracle.generate(oracle.tokenize(PROMPT.encode()), temp=0.0, reset=True):
        want.append(token)
        if len(want) == n:
            break
    r = httpx.post(server.url + "/v1/completions", json={"model": "default", "prompt": PROMPT, "max_tokens": n,
                                                         "temperature": 0, "ignore_eos": True, "logprobs": 2,
                                                         "return_token_ids": True}).json()
    choice = r["choices"][0]
    assert choice["token_ids"] == want and r["usage"]["completion_tokens"] == n
    assert choice["logprobs"]["tokens"] == [oracle.detokenize([t]).decode("utf-8", "replace") for t in want]
    # the same, in chat's shape (llama-host's logprobs_format, as llama-server's /v1/completions answers)
    shaped = httpx.post(server.url + "/v1/completions", json={"model": "default", "prompt": PROMPT, "max_tokens": n,
                                                              "temperature": 0, "ignore_eos": True, "logprobs": 2,
                                                              "logprobs_format": "chat"}).json()["choices"][0]
    entries = shaped["logprobs"]["content"]
    assert [e["id"] for e in entries] == want and all(e["id"] == e["top_logprobs"][0]["id"] for e in entries)
    assert all(bytes(e["bytes"]) == oracle.detokenize([e["id"]]) for e in entries)
    assert [e["logprob"] for e in entries] == choice["logprobs"]["token_logprobs"]


def test_continuous_usage_stats_put_the_counts_so_far_in_every_chunk(server):
    """vLLM's stream option: each chunk's usage is the counts so far; the last usage is the answer's."""
    chunks = list(server.client().chat.completions.create(
        model="default", messages=M, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"stream_options": {"continuous_usage_stats": True}}))
    usages = [c.usage for c in chunks]
    assert all(u is not None for u in usages) and len({u.prompt_tokens for u in usages}) == 1
    counts = [u.completion_tokens for u in usages]
    assert counts == sorted(counts) and counts[-1] == 6 and counts[0] <= 1


def test_streamed_token_ids_are_the_whole_answers(server):
    client = server.client()
    for args in (dict(messages=M), dict(prompt=PROMPT)):
        create = client.chat.completions.create if "messages" in args else client.completions.create
        common = dict(model="default", max_tokens=10, temperature=0, extra_body={"return_token_ids": True}, **args)
        whole = create(**common)
        ids = whole.choices[0].token_ids
        assert len(ids) == whole.usage.completion_tokens > 0
        chunks = [c for c in create(**common, stream=True) if c.choices]
        assert all(isinstance(c.choices[0].token_ids, list) for c in chunks)
        assert sum((c.choices[0].token_ids for c in chunks), []) == ids
        chat = create(**common, logprobs=True) if "messages" in args else None
        if chat is not None:
            assert [e.id for e in chat.choices[0].logprobs.content] == ids  # (a field more the SDK keeps)
    plain = client.completions.create(model="default", prompt=PROMPT, max_tokens=2)
    assert "token_ids" not in plain.choices[0].model_dump()


def test_streamed_token_ids_come_with_their_text_and_log_probabilities(server):
    """A token whose text is held back (here: it may begin a stop string) has its id in the chunk
    that releases the text, with its log-probability; ids a stop string cut come at the end."""
    base = {"model": "default", "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True}
    full = httpx.post(server.url + "/v1/completions", json={**base, "logprobs": 0, "logprobs_format": "chat"}).json()
    full = full["choices"][0]
    k = next(i for i, e in enumerate(full["logprobs"]["content"]) if i >= 3 and e["token"].strip())
    held = full["logprobs"]["content"][k]["token"] + "\u0001never"  # (token k's text waits for the next one)
    for extra in ({}, {"logprobs": 1, "logprobs_format": "chat"}):
        body = {**base, **extra, "stop": [held], "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            chunks = [json.loads(line[6:])["choices"][0] for line in r.iter_lines() if line.startswith("data: {")]
        assert sum((c["token_ids"] for c in chunks), []) == full["token_ids"]
        assert any(len(c["token_ids"]) > 1 for c in chunks)  # (the held one and the next)
        for c in chunks[:-1]:
            assert bool(c["token_ids"]) == bool(c["text"]) or c["logprobs"], c
            if extra:
                assert c["token_ids"] == [e["id"] for e in (c["logprobs"] or {}).get("content", [])], c


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/completions", {"logprobs": 1, "logprobs_format": "content"}, "logprobs_format"),
    ("/v1/completions", {"return_token_ids": 1}, "return_token_ids"),
    ("/v1/chat/completions", {"return_token_ids": "yes"}, "return_token_ids"),
    ("/v1/chat/completions", {"logprobs": 2}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
])
def test_bad_logprob_requests_are_400_naming_the_field(server, path, extra, param):
    body = {"model": "default", "max_tokens": 2, **extra}
    body.update({"messages": M} if "chat" in path else {"prompt": PROMPT})
    r = httpx.post(server.url + path, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert server.healthy()


def test_without_logprobs_the_field_is_null(server):
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": "default", "messages": M, "max_tokens": 2, "logprobs": False}).json()
    assert r["choices"][0]["logprobs"] is None
    raw = httpx.post(server.url + "/v1/completions", json={"model": "default", "prompt": "a", "max_tokens": 2,
                                                           "stream": True}).text
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert all(e["choices"][0]["logprobs"] is None for e in events)
