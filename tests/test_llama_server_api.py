"""llama-server's native endpoints (/completion, /tokenize, /detokenize, /props) against a live
server, in the style of llama.cpp's own suite: token counts exact, shapes as its README gives them,
and the same greedy text as llama-host's OpenAI completion of the same prompt."""

from __future__ import annotations

import json

import httpx
import pytest

from live import Server
from llama_host.engine.model import Model

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def server(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--parallel", "3", "default", "auto"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def vocab(model_path):
    with Model(model_path("tiny"), vocab_only=True) as m:
        yield m


def openai_completion(http, prompt, n):
    return http.post("/v1/completions", json={"prompt": prompt, "max_tokens": n, "temperature": 0}).json()


def test_completion_answers_in_llama_servers_shape(http):
    want = openai_completion(http, PROMPT, 8)
    r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 8, "temperature": 0, "cache_prompt": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["content"] == want["choices"][0]["text"] and body["stop"] is True
    assert body["tokens_predicted"] == 8 == want["usage"]["completion_tokens"]
    assert body["tokens_evaluated"] == want["usage"]["prompt_tokens"]
    assert body["stop_type"] == "limit" and body["generation_settings"]["n_predict"] == 8
    assert body["prompt"] == PROMPT and body["has_new_line"] == ("\n" in body["content"])


def test_a_streamed_completion_is_its_pieces_then_the_counts(server, http):
    whole = http.post("/completion", json={"prompt": PROMPT, "n_predict": 8, "temperature": 0}).json()
    with httpx.stream("POST", server.url + "/completion", json={"prompt": PROMPT, "n_predict": 8, "temperature": 0,
                                                               "stream": True}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert all(line.startswith("data: ") for line in lines) and "[DONE]" not in lines[-1]
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events[:-1]) == whole["content"]
    assert events[-1]["tokens_predicted"] == 8 and events[-1]["stop_type"] == "limit"
    assert events[-1]["timings"]["predicted_n"] == 8


def test_token_prompts_and_tokenize_agree(http, vocab):
    tokens = http.post("/tokenize", json={"content": PROMPT, "add_special": True}).json()["tokens"]
    assert tokens == vocab.tokenize(PROMPT, add_bos=True)
    by_text = http.post("/completion", json={"prompt": PROMPT, "n_predict": 4, "temperature": 0}).json()
    by_ids = http.post("/completion", json={"prompt": tokens, "n_predict": 4, "temperature": 0}).json()
    assert by_ids["content"] == by_text["content"] and by_ids["tokens_evaluated"] == len(tokens)


def test_tokenize_with_pieces_and_detokenize_round_trip(http, vocab):
    text = "Ünïcödé and <|im_start|> text"
    pieces = http.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == vocab.tokenize(text, add_bos=False)
    assert all(isinstance(p["piece"], (str, list)) for p in pieces)
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined == vocab.detokenize([p["id"] for p in pieces], special=True).encode()
    ids = [p["id"] for p in pieces]
    assert http.post("/detokenize", json={"tokens": ids}).json()["content"] == vocab.detokenize(ids, special=True)


def test_n_probs_gives_completion_probabilities(http):
    body = http.post("/completion", json={"prompt": PROMPT, "n_predict": 5, "temperature": 0, "n_probs": 3}).json()
    probs = body["completion_probabilities"]
    assert len(probs) == body["tokens_predicted"] == 5
    assert "".join(p["token"] for p in probs) == body["content"]
    # (at most 3: OpenAI's legacy logprobs, which this is made from, key alternatives by their text)
    assert all(1 <= len(p["top_logprobs"]) <= 3 and p["logprob"] <= 0 for p in probs)
    assert all(p["logprob"] >= max(t["logprob"] for t in p["top_logprobs"]) for p in probs)  # greedy


def test_props_describe_the_served_model(http, vocab):
    props = http.get("/props").json()
    assert props["total_slots"] == 3 and props["chat_template"] == vocab.info.chat_template
    assert props["model_alias"] == "default" and props["model_path"].endswith(".gguf")
    missing = http.get("/props", params={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


@pytest.mark.parametrize("path, body, param", [
    ("/completion", {}, "prompt"),
    ("/completion", {"prompt": [1, "mixed"]}, "prompt"),
    ("/completion", {"prompt": PROMPT, "n_predict": 0}, "n_predict"),
    ("/completion", {"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ("/completion", {"prompt": [10 ** 9]}, "prompt"),
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {}, "content"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": [10 ** 9]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/tokenize", {"content": "x", "model": "nope"}, "model"),
])
def test_bad_bodies_are_a_400_naming_the_field(server, http, path, body, param):
    r = http.post(path, json=body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param, r.text
    assert server.healthy()


def test_wrong_values_never_take_it_down(server, http):
    for path in ("/completion", "/tokenize", "/detokenize"):
        for body in (b"[", b"null", b"[" * 10_000 + b"]" * 10_000, b'{"content": "' + b"a" * 100_000 + b'"}'):
            assert http.post(path, content=body).status_code in (200, 400)
        for name in ("prompt", "n_predict", "n_probs", "stream", "content", "tokens", "with_pieces", "add_special"):
            for value in (None, True, -1, 1.5, "x", [], [None], {}):
                base = {"prompt": PROMPT, "n_predict": 1, "content": "x", "tokens": [1]}
                assert http.post(path, json={**base, name: value}).status_code in (200, 400), (path, name, value)
    assert server.healthy()


def test_metrics_carry_llama_servers_names(http):
    import re

    http.post("/completion", json={"prompt": PROMPT, "n_predict": 3})
    text = http.get("/metrics").text

    def total(pattern):
        return sum(float(v) for v in re.findall(pattern, text, re.M))

    ours = total(r"^llama_host_generated_tokens_total\{[^}]*\} (\S+)$")
    assert ours >= 3 and total(r"^llamacpp:tokens_predicted_total (\S+)$") == ours
    assert total(r"^llamacpp:prompt_tokens_total (\S+)$") == total(r"^llama_host_prompt_tokens_total\{[^}]*\} (\S+)$")
    assert total(r"^llamacpp:n_decode_total (\S+)$") > 0
    assert re.search(r"^llamacpp:requests_processing \S+$", text, re.M)
    assert re.search(r"^llamacpp:requests_deferred \S+$", text, re.M)


def test_slots_show_each_sequence_and_its_cache(http):
    http.post("/completion", json={"prompt": PROMPT, "n_predict": 4, "temperature": 0})
    slots = http.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1, 2] and not any(s["is_processing"] for s in slots)
    used = [s for s in slots if s["n_decoded"] == 4]
    assert used and used[0]["n_cached"] >= used[0]["n_prompt_tokens"] > 0
    assert http.get("/slots", params={"model": "nope"}).status_code == 404


def test_a_stop_string_is_named_by_every_api(server, http):
    """The stop string that ended the text: OpenAI answers' `stop_word`, llama-server's
    stop_type "word", Anthropic's stop_sequence; none when the text ended otherwise."""
    free = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
    text = free["choices"][0]["text"]
    assert "stop_word" not in free["choices"][0]
    at = next(i for i in range(1, len(text) - 3) if text[i:i + 3].strip() and text[i:i + 3] not in text[:i + 2])
    word = text[at:at + 3]
    args = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stop": [word, "never-there"]}
    cut = http.post("/v1/completions", json=args).json()["choices"][0]
    assert (cut["text"], cut["finish_reason"], cut["stop_word"]) == (text[:at], "stop", word)
    with httpx.stream("POST", server.url + "/v1/completions", json={**args, "stream": True}, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert [c["choices"][0].get("stop_word") for c in chunks if c["choices"][0]["finish_reason"]] == [word]
    native = http.post("/completion", json={"prompt": PROMPT, "n_predict": 12, "temperature": 0, "stop": [word]}).json()
    assert (native["stop_type"], native["stopping_word"]) == ("word", word)
    assert http.post("/completion", json={"prompt": PROMPT, "n_predict": 3}).json()["stop_type"] == "limit"
    chat_args = {"model": "default", "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": PROMPT}]}
    reply = http.post("/v1/messages", json=chat_args).json()["content"][0]["text"]
    at = next(i for i in range(1, len(reply) - 3) if reply[i:i + 3].strip() and reply[i:i + 3] not in reply[:i + 2])
    word = reply[at:at + 3]
    m = http.post("/v1/messages", json={**chat_args, "stop_sequences": [word]}).json()
    assert (m["stop_reason"], m["stop_sequence"], m["content"][0]["text"]) == ("stop_sequence", word, reply[:at])


def test_answers_carry_llama_servers_timings(http):
    for path, body in (("/v1/completions", {"prompt": PROMPT + " again", "max_tokens": 6}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6})):
        answer = http.post(path, json={**body, "temperature": 0}).json()
        t, usage = answer["timings"], answer["usage"]
        assert t["prompt_n"] + t["cache_n"] == usage["prompt_tokens"] and t["cache_n"] == usage["prompt_tokens_details"]["cached_tokens"]
        assert t["predicted_n"] == usage["completion_tokens"] == 6
        assert t["prompt_ms"] > 0 and t["predicted_ms"] > 0 and t["predicted_per_second"] > 0
    native = http.post("/completion", json={"prompt": PROMPT, "n_predict": 4}).json()
    assert native["timings"]["predicted_n"] == native["tokens_predicted"] == 4


def test_a_streamed_choice_ends_with_its_timings(server):
    for path, body in (("/v1/completions", {"prompt": PROMPT, "max_tokens": 5}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5})):
        with httpx.stream("POST", server.url + path, json={**body, "stream": True, "temperature": 0}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        timed = [c for c in chunks if "timings" in c]
        assert len(timed) == 1 and timed[0]["choices"][0]["finish_reason"] == "length", path
        assert timed[0]["timings"]["predicted_n"] == 5 and timed[0]["timings"]["predicted_ms"] > 0
