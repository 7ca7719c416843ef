"""Several choices per request (`n`, lists of prompts) and token-id inputs, end to end with the
openai SDK: a prompt is evaluated once and its KV cells shared by its choices."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from live import Server
from llama_host.engine.model import Model

PARALLEL = 4
M = [{"role": "system", "content": "You are a helpful assistant who answers every question in detail."},
     {"role": "user", "content": "Tell me about the history of the city of Paris and its bridges."}]
PROMPT = "Once upon a time, in a land far away, there lived a king who had three daughters and a dragon"


@pytest.fixture(scope="module")
def spm(model_path):
    return str(model_path("spm"))


@pytest.fixture(scope="module")
def server(spm):
    s = Server([f"--nn-preload=default:GGML:CPU:{spm}", "--ctx-size", "512", "--parallel", str(PARALLEL),
                "--batch-size", "64", "default", "chatml"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def vocab(spm):
    with Model(spm, vocab_only=True) as model:
        yield model


def prompt_tokens_evaluated(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(v) for v in re.findall(r'^llama_host_prompt_tokens_total\{[^}]*\} (\S+)$', text, re.M))


def test_greedy_choices_equal_the_solo_answer_and_share_the_prompt(server):
    client = server.client()
    solo = client.chat.completions.create(model="default", messages=M, max_tokens=10, temperature=0)
    before = prompt_tokens_evaluated(server)
    r = client.chat.completions.create(model="default", messages=M, max_tokens=10, temperature=0, n=3)
    evaluated = prompt_tokens_evaluated(server) - before
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == solo.choices[0].message.content for c in r.choices)
    assert all(c.finish_reason == solo.choices[0].finish_reason for c in r.choices)
    n_prompt = solo.usage.prompt_tokens
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 3 * solo.usage.completion_tokens
    # The second and third choices copy the first's cells: each evaluates its prompt's last token only.
    assert evaluated <= n_prompt + 2, (evaluated, n_prompt)


def test_seeded_choices_differ_and_are_reproducible(server):
    client = server.client()
    args = dict(model="default", prompt=PROMPT, max_tokens=12, temperature=1.2, seed=42, extra_body={"ignore_eos": True})
    a = client.completions.create(**args, n=3)
    b = client.completions.create(**args, n=3)
    texts = [c.text for c in a.choices]
    assert texts == [c.text for c in b.choices]
    assert len(set(texts)) == 3
    assert texts[0] == client.completions.create(**args).choices[0].text  # choice 0 draws with the seed itself


def test_streamed_choices_equal_the_whole_answer(server):
    client = server.client()
    args = dict(model="default", messages=M, max_tokens=8, temperature=1.0, seed=7, n=2, logprobs=True)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert [c.finish_reason for c in mine if c.finish_reason] == [choice.finish_reason]
        streamed = [e for c in mine if c.logprobs for e in c.logprobs.content]
        assert [e.token for e in streamed] == [e.token for e in choice.logprobs.content]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_n_above_parallel_is_a_400_naming_the_limit(server):
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": "default", "messages": M, "n": PARALLEL + 1, "max_tokens": 2})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "n" and f"the {PARALLEL} sequences" in error["message"]
    assert server.healthy()


def test_a_list_of_prompts_gets_n_choices_each_in_order(server):
    client = server.client()
    prompts = [PROMPT, "The capital of France is"]
    args = dict(model="default", max_tokens=6, temperature=0)
    solos = [client.completions.create(prompt=p, **args) for p in prompts]
    r = client.completions.create(prompt=prompts, n=2, **args)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [solos[0].choices[0].text] * 2 + [solos[1].choices[0].text] * 2
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in solos)


def test_token_id_prompts_equal_their_text(server, vocab):
    client = server.client()
    tokens = vocab.tokenize(PROMPT)
    args = dict(model="default", max_tokens=8, temperature=0)
    text = client.completions.create(prompt=PROMPT, **args)
    by_ids = client.completions.create(prompt=tokens, **args)
    batch = client.completions.create(prompt=[tokens, tokens[:5]], **args)
    assert by_ids.choices[0].text == text.choices[0].text == batch.choices[0].text
    assert by_ids.usage.prompt_tokens == text.usage.prompt_tokens == len(tokens)
    assert batch.usage.prompt_tokens == len(tokens) + 5
    bad = httpx.post(server.url + "/v1/completions", json={"model": "default", "prompt": [1, vocab.n_vocab]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    assert f"token id {vocab.n_vocab} (at position 1)" in bad.json()["error"]["message"]


def test_token_id_embedding_inputs_equal_their_text(server, vocab):
    client = server.client()
    tokens = vocab.tokenize("hello world")
    text = client.embeddings.create(model="default", input="hello world", encoding_format="float")
    ids = client.embeddings.create(model="default", input=tokens, encoding_format="float")
    many = client.embeddings.create(model="default", input=[tokens, tokens[:2]], encoding_format="float")
    assert np.allclose(text.data[0].embedding, ids.data[0].embedding, atol=1e-6)
    assert np.allclose(many.data[0].embedding, ids.data[0].embedding, atol=1e-6) and len(many.data) == 2
    assert ids.usage.prompt_tokens == len(tokens) and many.usage.prompt_tokens == len(tokens) + 2
    for bad, words in (([-1], "'input[0]' must be a token id"), ([[1], [vocab.n_vocab + 5]], "not in the model's vocabulary"),
                       ([[]], "at least one token id"), ([[1], 2], "'input[1]' must be a string or a list of token ids")):
        r = httpx.post(server.url + "/v1/embeddings", json={"model": "default", "input": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", (bad, r.text)
        assert words in r.json()["error"]["message"], r.text
    # one input of 3000 tokens is one input too long for the context, not 3000 inputs (past 2048, refused as such)
    long = httpx.post(server.url + "/v1/embeddings", json={"model": "default", "input": (tokens * 3000)[:3000]}).json()["error"]
    assert long["code"] == "context_length_exceeded" and "inputs" not in long["message"], long
