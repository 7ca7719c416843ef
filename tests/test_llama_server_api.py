"""llama-server's native endpoints (/completion, /tokenize, /detokenize, /props) against a live
server, in the style of llama.cpp's own suite: token counts exact, shapes as its README gives them,
and the same greedy text as llama-host's OpenAI completion of the same prompt."""

from __future__ import annotations

import contextlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from live import Server
from llama_host import vendor
from llama_host.engine import slot_file
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


def test_n_probs_gives_completion_probabilities(http, vocab):
    body = http.post("/completion", json={"prompt": PROMPT, "n_predict": 5, "temperature": 0, "n_probs": 3,
                                          "return_tokens": True}).json()
    probs = body["completion_probabilities"]
    assert len(probs) == body["tokens_predicted"] == 5
    assert "".join(p["token"] for p in probs) == body["content"]
    assert [p["id"] for p in probs] == body["tokens"]
    for p in probs:  # llama-server's items: id, token, logprob, bytes, and as many alternatives as asked
        assert p.keys() == {"id", "token", "logprob", "bytes", "top_logprobs"} and p["logprob"] <= 0
        assert bytes(p["bytes"]) == vocab.piece(p["id"])
        assert len(p["top_logprobs"]) == 3 and all(t.keys() == {"id", "token", "logprob", "bytes"} for t in p["top_logprobs"])
        assert (p["id"], p["logprob"]) == (p["top_logprobs"][0]["id"], p["top_logprobs"][0]["logprob"])  # greedy


def test_return_tokens_gives_the_generated_ids(server, http, vocab):
    args = {"prompt": PROMPT, "n_predict": 6, "temperature": 0, "ignore_eos": True}
    plain = http.post("/completion", json=args).json()
    assert plain["tokens"] == []  # (only when asked for, or streamed: as llama-server)
    body = http.post("/completion", json={**args, "return_tokens": True}).json()
    assert len(body["tokens"]) == body["tokens_predicted"] == 6
    assert vocab.detokenize(body["tokens"]) == body["content"] == plain["content"]
    with httpx.stream("POST", server.url + "/completion", json={**args, "stream": True}, timeout=60) as r:
        events = [json.loads(line.removeprefix("data: ")) for line in r.iter_lines() if line]
    assert sum((e["tokens"] for e in events), []) == body["tokens"]
    assert all(len(e["tokens"]) >= 1 for e in events[:-1])


def test_typical_p_narrows_sampling_and_samplers_can_leave_it_out(http):
    def text(**kw):
        r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 12, "seed": 9, "temperature": 1.5, **kw})
        assert r.status_code == 200, r.text
        return r.json()["content"]

    free = text(top_k=0, min_p=0, top_p=1)
    assert text(top_k=0, min_p=0, top_p=1, typical_p=1.0) == free  # (1: off)
    assert text(top_k=0, min_p=0, top_p=1, typical_p=0.01) != free
    assert text(typical_p=0.01, samplers=["temperature"]) == text(samplers="t")  # (typ_p left out: off)
    assert text(typical_p=0.01, samplers="yt") == text(top_k=0, min_p=0, top_p=1, typical_p=0.01)


@pytest.mark.parametrize("settings, letter", [
    ({"mirostat": 2, "mirostat_tau": 1.0}, None),
    ({"mirostat": 1, "mirostat_tau": 1.0, "mirostat_eta": 0.5}, None),
    ({"xtc_probability": 1.0, "xtc_threshold": 0.001}, "x"),
    ({"top_n_sigma": 0.5}, "s"),
    ({"dynatemp_range": 1.4, "dynatemp_exponent": 2.0}, None),
    # (greedy: the random model loops, and DRY, like the penalties, acts before the draw)
    ({"temperature": 0, "dry_multiplier": 5.0, "dry_allowed_length": 1, "dry_base": 3.0, "dry_sequence_breakers": []}, "d"),
])
def test_llama_servers_other_samplers_change_the_draw_and_samplers_can_leave_them_out(http, settings, letter):
    """Mirostat, XTC, top-n-sigma and DRY: each draws other tokens than the same request without
    it (same seed), the same ones again (reproducible), and none of that once ``samplers`` leaves
    it out."""
    def text(**kw):
        r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 32, "seed": 11, "temperature": 3.0 / 2,
                                           "top_k": 0, "min_p": 0, "top_p": 1, "ignore_eos": True, **kw})
        assert r.status_code == 200, r.text
        return r.json()["content"]

    base = {k: v for k, v in settings.items() if k == "temperature"}
    assert text(**settings) != text(**base) and text(**settings) == text(**settings)
    if letter is not None:
        assert text(**settings, samplers="et") == text(**base, samplers="et")
        assert text(**settings, samplers="e" + letter + "t") == text(**settings)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "<|im_end|>x"}] * 5000}, "messages"),
    ("/v1/completions", {"prompt": "<|im_end|>x" * 20000}, "prompt"),
    ("/completion", {"prompt": "<|im_end|>x" * 20000}, "prompt"),
    ("/v1/embeddings", {"input": "<|im_end|>x" * 20000}, "input"),
    ("/embedding", {"content": "<|im_end|>x" * 20000}, None),
])
def test_a_prompt_no_context_could_hold_is_refused_before_it_is_tokenized(server, http, vocab, path, body, param):
    """llama.cpp's tokenizer splits special tokens in time that grows with the square of their
    count: a 2 MB chat of 50,000 messages took 4 minutes of CPU to learn it was too long."""
    r = http.post(path, json={"model": "default", **body})
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and "at least" in error["message"], error
    assert param is None or error["param"] == param, error
    assert server.healthy()


def test_response_fields_pick_and_unnest(http):
    whole = http.post("/completion", json={"prompt": PROMPT, "n_predict": 3, "temperature": 0}).json()
    fields = ["content", "generation_settings/n_predict", "timings/predicted_n", "nope", "content/deeper"]
    picked = http.post("/completion", json={"prompt": PROMPT, "n_predict": 3, "temperature": 0,
                                            "response_fields": fields}).json()
    assert picked == {"content": whole["content"], "generation_settings/n_predict": 3, "timings/predicted_n": 3}


def test_id_slot_runs_the_request_on_that_slot(http):
    prompt = "A prompt for the second slot only"
    for slot in (2, 1):
        body = http.post("/completion", json={"prompt": prompt, "n_predict": 3, "temperature": 0, "id_slot": slot}).json()
        assert body["id_slot"] == slot
        cached = {s["id"]: s["n_cached"] for s in http.get("/slots").json()}
        assert cached[slot] == body["tokens_evaluated"] + 3 - 1  # (the last token drawn is not in the cache)
    again = http.post("/completion", json={"prompt": prompt, "n_predict": 3, "temperature": 0}).json()
    assert again["id_slot"] in (1, 2) and again["tokens_cached"] == again["tokens_evaluated"] - 1
    # the OpenAI endpoints take it too, and then name the slot
    chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                  "id_slot": 0}).json()
    assert chat["id_slot"] == 0
    # (1.0 is 1 on every route, as the guest takes it)
    assert http.post("/completion", json={"prompt": prompt, "n_predict": 1, "id_slot": 1.0}).json()["id_slot"] == 1
    assert "id_slot" not in http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).json()


def test_logit_bias_in_each_of_llama_servers_forms(http, vocab):
    def first(bias=None):
        body = {"prompt": PROMPT, "n_predict": 1, "temperature": 0, **({"logit_bias": bias} if bias is not None else {})}
        r = http.post("/completion", json=body)
        assert r.status_code == 200, r.text
        return r.json()["content"]

    greedy = first()
    (token,) = [t for t in range(vocab.n_vocab) if vocab.piece(t) == greedy.encode()]
    for ban in ({str(token): False}, [[token, False]], [[token, -1000]]):
        assert first(ban) != greedy, ban
    (word,) = vocab.tokenize("hello", add_bos=False, special=False)  # (a text is biased token by token)
    assert word != token
    for boost in ({str(word): 100}, [[word, 100]], [["hello", 1e9]], {"hello": 100}):
        assert first(boost) == vocab.piece(word).decode(), boost
    assert first([["hello", False]]) == greedy != first([[greedy, False]])
    assert first({str(word): 100, "999999999": 5, "-3": 5}) == vocab.piece(word).decode()  # (unknown ids: skipped)
    assert first([]) == first({}) == greedy


def test_samplers_left_out_are_off(http):
    def text(**kw):
        r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 12, "seed": 5, "temperature": 1.5, **kw})
        assert r.status_code == 200, r.text
        return r.json()["content"]

    narrow = {"top_k": 1, "top_p": 0.05, "min_p": 0.9}  # (each alone makes the draw greedy)
    greedy = text(temperature=0)
    assert text(**narrow) == greedy
    free = text(top_k=0, top_p=1.0, min_p=0.0)
    assert free != greedy  # (else the test could not tell)
    for samplers in (["temperature"], ["Temp", "dry", "xtc"], "t", "dxt"):
        assert text(**narrow, samplers=samplers) == free, samplers
    assert text(**narrow, samplers=["top_k", "temperature"]) == greedy
    assert text(**narrow, samplers="kt") == greedy
    assert text(temperature=0, samplers=[]) == greedy  # (greedy stays greedy)


@pytest.mark.parametrize("samplers", [5, [1], {"top_k": 1}, [None]])
def test_malformed_samplers_are_a_400(server, http, samplers):
    r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "samplers": samplers})
    assert r.status_code == 400 and r.json()["error"]["param"] == "samplers", r.text


@pytest.mark.parametrize("bias, param", [
    (5, "logit_bias"), ("x", "logit_bias"), ([[1]], "logit_bias[0]"), ([[1, "x"]], "logit_bias[0]"),
    ([[{}, 1]], "logit_bias[0]"), ({"1": "x"}, "logit_bias.1"), ({"1": None}, "logit_bias.1"),
    ([[1, True]], "logit_bias[0]"),
])
def test_malformed_logit_bias_is_a_400_naming_the_entry(server, http, bias, param):
    r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "logit_bias": bias})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert server.healthy()


def test_props_describe_the_served_model(http, vocab):
    props = http.get("/props").json()
    assert props["total_slots"] == 3 and props["chat_template"] == vocab.info.chat_template
    assert props["model_alias"] == "default" and props["model_path"].endswith(".gguf")
    missing = http.get("/props", params={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


@pytest.mark.parametrize("path, body, param", [
    ("/completion", {}, "prompt"),
    ("/completion", {"prompt": [1, None]}, "prompt"),
    ("/completion", {"prompt": {"prompt_string": 5}}, "prompt"),
    ("/completion", {"prompt": ["a", [1, {}]]}, "prompt[1]"),
    ("/completion", {"prompt": []}, "prompt"),
    ("/infill", {"input_prefix": 5}, "input_prefix"),
    ("/infill", {"input_extra": [{"text": 1}]}, "input_extra[0]"),
    ("/embedding", {"content": 5}, "content"),
    ("/embedding", {"content": "x", "embd_normalize": "2"}, "embd_normalize"),
    ("/completion", {"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ("/completion", {"prompt": [10 ** 9]}, "prompt"),
    ("/completion", {"prompt": PROMPT, "n_probs": 21}, "n_probs"),
    ("/completion", {"prompt": PROMPT, "samplers": [], "temperature": "x"}, "temperature"),
    ("/completion", {"prompt": PROMPT, "typical_p": 2}, "typical_p"),
    ("/completion", {"prompt": PROMPT, "top_n_sigma": "x"}, "top_n_sigma"),
    ("/completion", {"prompt": PROMPT, "dynatemp_range": -1}, "dynatemp_range"),
    ("/completion", {"prompt": PROMPT, "mirostat_tau": 1e300 * 10}, "mirostat_tau"),
    ("/completion", {"prompt": PROMPT, "dry_allowed_length": 1.5}, "dry_allowed_length"),
    ("/v1/completions", {"prompt": PROMPT, "stream": True, "stream_options": {"continuous_usage_stats": "yes"}},
     "stream_options.continuous_usage_stats"),
    ("/completion", {"prompt": PROMPT, "mirostat": 3}, "mirostat"),
    ("/completion", {"prompt": PROMPT, "xtc_probability": 1.5}, "xtc_probability"),
    ("/completion", {"prompt": PROMPT, "dry_multiplier": -1}, "dry_multiplier"),
    ("/completion", {"prompt": PROMPT, "dry_penalty_last_n": -2}, "dry_penalty_last_n"),
    ("/completion", {"prompt": PROMPT, "dry_sequence_breakers": ["\n"] * 33}, "dry_sequence_breakers"),
    ("/completion", {"prompt": PROMPT, "dry_sequence_breakers": [1]}, "dry_sequence_breakers"),
    ("/completion", {"prompt": PROMPT, "dry_sequence_breakers": ["x" * 257]}, "dry_sequence_breakers"),
    ("/completion", {"prompt": PROMPT, "response_fields": ["content", 1]}, "response_fields"),
    ("/completion", {"prompt": PROMPT, "response_fields": "content"}, "response_fields"),
    ("/completion", {"prompt": PROMPT, "id_slot": 3}, "id_slot"),
    ("/completion", {"prompt": PROMPT, "id_slot": -2}, "id_slot"),
    ("/completion", {"prompt": PROMPT, "id_slot": "0"}, "id_slot"),
    ("/completion", {"prompt": ["one", "two"], "id_slot": 0}, "id_slot"),
    ("/completion", {"prompt": PROMPT, "return_tokens": "yes"}, "return_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "id_slot": 2 ** 40}, "id_slot"),
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


# --- prompts: mixed, several, none to generate ---------------------------------------------------


def native(http, prompt, n=4, **kw):
    r = http.post("/completion", json={"prompt": prompt, "n_predict": n, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_mixed_prompt_tokenizes_its_strings_in_place(http, vocab):
    rest = vocab.tokenize(" upon a time", add_bos=False)
    mixed = native(http, ["Once", *rest])
    ids = vocab.tokenize("Once") + rest  # a leading string gets the model's BOS
    assert mixed["tokens_evaluated"] == len(ids) and mixed["content"] == native(http, ids)["content"]
    led_by_ids = native(http, [*rest, " and then"])  # a leading token id: no BOS
    assert led_by_ids["tokens_evaluated"] == len(rest) + len(vocab.tokenize(" and then", add_bos=False))


def test_several_prompts_give_a_result_each(server, http, vocab):
    ids = vocab.tokenize("Hello world")
    given = [PROMPT, ids, {"prompt_string": "The answer"}]
    alone = [native(http, PROMPT), native(http, ids), native(http, "The answer")]
    results = native(http, given)
    assert isinstance(results, list) and [r["index"] for r in results] == [0, 1, 2]
    assert [r["content"] for r in results] == [a["content"] for a in alone]
    assert [r["tokens_evaluated"] for r in results] == [len(vocab.tokenize(PROMPT)), len(ids), len(vocab.tokenize("The answer"))]
    with httpx.stream("POST", server.url + "/completion", json={"prompt": given, "n_predict": 4, "temperature": 0,
                                                               "stream": True}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    ends = [e for e in events if e["stop"]]
    assert sorted(e["index"] for e in ends) == [0, 1, 2] and all(e["tokens_predicted"] == 4 for e in ends)
    for i, a in enumerate(alone):
        assert "".join(e["content"] for e in events if not e["stop"] and e["index"] == i) == a["content"]


def test_n_predict_0_evaluates_and_caches_the_prompt_only(http, vocab):
    prompt = "A prompt to warm up the cache with, once"
    warm = native(http, prompt, 0)
    n = len(vocab.tokenize(prompt))
    assert (warm["content"], warm["tokens_predicted"], warm["tokens_evaluated"]) == ("", 0, n)
    assert warm["stop_type"] == "limit"
    after = native(http, prompt, 2)
    assert after["tokens_cached"] == n - 1 and after["tokens_predicted"] == 2  # (the last token is evaluated again)


def test_openai_scoring_echo_with_max_tokens_0(http, vocab):
    """lm-evaluation-harness's loglikelihood: echo the prompt with its logprobs, generate nothing."""
    args = {"prompt": PROMPT, "echo": True, "logprobs": 1, "temperature": 0}
    scored = http.post("/v1/completions", json={**args, "max_tokens": 0}).json()
    choice = scored["choices"][0]
    assert choice["text"] == PROMPT and scored["usage"]["completion_tokens"] == 0
    one_more = http.post("/v1/completions", json={**args, "max_tokens": 1}).json()["choices"][0]["logprobs"]
    n = len(choice["logprobs"]["tokens"])
    assert n == len(vocab.tokenize(PROMPT)) - 1  # (every token after the BOS, each scored given what precedes it)
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(one_more["token_logprobs"][:n], abs=1e-4)
    chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "max_tokens"


def test_completions_without_v1_answer_in_the_shape_asked_for(server, http):
    ours = http.post("/completions", json={"prompt": PROMPT, "n_predict": 4, "temperature": 0}).json()
    assert ours["content"] == native(http, PROMPT)["content"] and ours["tokens_predicted"] == 4
    bare = http.post("/completions", json={"prompt": PROMPT, "temperature": 0}).json()  # no model: llama-server's
    assert "content" in bare
    import openai

    sdk = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)  # (no /v1 in the base URL)
    answer = sdk.completions.create(model="default", prompt=PROMPT, max_tokens=4, temperature=0)
    assert answer.choices[0].text == ours["content"]


# --- embeddings, tokens counted ------------------------------------------------------------------


def test_embedding_in_llama_servers_shape(http):
    openai_vector = http.post("/v1/embeddings", json={"input": "hello world"}).json()["data"][0]["embedding"]
    got = http.post("/embedding", json={"content": "hello world"}).json()
    assert [g["index"] for g in got] == [0] and len(got[0]["embedding"]) == 1
    assert got[0]["embedding"][0] == pytest.approx(openai_vector, abs=1e-6)
    two = http.post("/embedding", json={"content": ["hello world", "the answer"]}).json()
    assert [g["index"] for g in two] == [0, 1] and two[0]["embedding"] == got[0]["embedding"]
    for p, check in ((1, lambda v: sum(abs(x) for x in v)), (0, lambda v: max(abs(x) for x in v)),
                     (3, lambda v: sum(abs(x) ** 3 for x in v) ** (1 / 3))):
        v = http.post("/embedding", json={"content": "hello world", "embd_normalize": p}).json()[0]["embedding"][0]
        assert check(v) == pytest.approx(32760 if p == 0 else 1, rel=1e-5)
    raw = http.post("/embedding", json={"content": "hello world", "embd_normalize": -1})
    assert raw.status_code == 501 and raw.json()["error"]["type"] == "not_supported_error"


def test_embeddings_without_v1_tells_the_apis_apart_by_body(http):
    assert "data" in http.post("/embeddings", json={"input": "hello"}).json()  # OpenAI's
    assert http.post("/embeddings", json={"content": "hello"}).json()[0]["index"] == 0  # llama-server's
    assert isinstance(http.post("/embeddings", json={"text": "hello"}).json()[0], float)  # llm-api's: the vector


def test_input_tokens_count_the_rendered_prompt(http):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    run = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}).json()
    counted = http.post("/v1/chat/completions/input_tokens", json={"messages": messages}).json()
    assert counted == {"object": "response.input_tokens", "input_tokens": run["usage"]["prompt_tokens"]}
    responses = http.post("/v1/responses/input_tokens", json={"instructions": "Be brief.", "input": PROMPT}).json()
    assert responses["input_tokens"] == run["usage"]["prompt_tokens"]


# --- /infill -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fim(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('fim')}", "--no-slots", "default", "auto"])
    with Model(model_path("fim"), vocab_only=True) as m, httpx.Client(base_url=s.url, timeout=60) as client:
        yield client, m
    assert s.stop() == 0, s.output


def test_infill_lays_out_the_fill_in_the_middle_prompt(fim):
    http, m = fim
    t, ids = m.fim_tokens, lambda text: m.tokenize(text, add_bos=False, special=False)
    body = {"input_prefix": "def hello(", "input_suffix": "):\n    pass\n", "prompt": "na",
            "input_extra": [{"filename": "util.py", "text": "x = 1"}], "n_predict": 4, "temperature": 0}
    got = http.post("/infill", json=body)
    assert got.status_code == 200, got.text
    # llama-server's README: the repo-level pattern, as the model has repository and file tokens
    want = [m.info.bos_id, t["rep"], *ids("myproject\n"), t["sep"], *ids("util.py\nx = 1\n"), t["sep"], *ids("filename\n"),
            t["pre"], *ids("def hello("), t["suf"], *ids("):\n    pass\n"), t["mid"], *ids("na")]
    assert got.json()["tokens_evaluated"] == len(want)
    assert got.json()["content"] == native(http, want)["content"]


def test_infill_keeps_what_is_near_the_cursor_when_too_long(fim):
    http, m = fim
    n_ctx = http.get("/props").json()["default_generation_settings"]["n_ctx"]
    body = {"input_prefix": "hello world " * n_ctx, "input_suffix": "the answer " * n_ctx, "n_predict": 8}
    got = http.post("/infill", json=body)
    assert got.status_code == 200, got.text
    assert n_ctx // 2 < got.json()["tokens_evaluated"] <= n_ctx - 8 and got.json()["tokens_predicted"] == 8


def test_infill_needs_a_model_with_fim_tokens(http):
    r = http.post("/infill", json={"input_prefix": "def f(", "input_suffix": ")"})
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"


def test_no_slots_turns_the_slots_endpoints_off(fim):
    http, _m = fim
    for r in (http.get("/slots"), http.post("/slots/0?action=erase")):
        assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"


# --- slot actions --------------------------------------------------------------------------------


def test_erase_empties_a_slots_cache(http):
    native(http, "Erase me once upon a time", 3)
    slot = max(http.get("/slots").json(), key=lambda s: s["n_cached"])
    erased = http.post(f"/slots/{slot['id']}?action=erase").json()
    assert erased == {"id_slot": slot["id"], "n_erased": slot["n_cached"]}
    assert http.get("/slots").json()[slot["id"]]["n_cached"] == 0


@pytest.mark.parametrize("url, body, status, param", [
    ("/slots/0?action=bogus", None, 400, "action"),
    ("/slots/0", None, 400, "action"),
    ("/slots/99?action=erase", None, 400, "id_slot"),
    ("/slots/x?action=erase", None, 400, "id_slot"),
    ("/slots/0?action=erase&model=nope", None, 404, "model"),
    ("/slots/0?action=save", {"filename": "a.bin"}, 501, None),
])
def test_bad_slot_actions_are_refused(server, http, url, body, status, param):
    r = http.post(url, json=body)
    assert (r.status_code, r.json()["error"]["param"]) == (status, param), r.text
    assert server.healthy()


@pytest.fixture(scope="module")
def saver(model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slots")
    # ("small": slow enough that a long answer keeps its slot busy for the busy-slot test)
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('small')}", "--parallel", "2", "--slot-save-path", str(folder),
                "--cors-origins", "*", "default", "auto"])
    with httpx.Client(base_url=s.url, timeout=60) as client:
        yield s, client, folder
    assert s.stop() == 0, s.output


def test_a_saved_slot_restores_to_the_same_greedy_text(saver):
    _s, http, folder = saver
    prompt = "Saved and restored, once upon a time there was"
    fresh = native(http, prompt, 12)
    slot = max(http.get("/slots").json(), key=lambda s: s["n_cached"])
    saved = http.post(f"/slots/{slot['id']}?action=save", json={"filename": "conv.bin"}).json()
    assert saved["n_saved"] == slot["n_cached"] == fresh["tokens_evaluated"] + 11  # (the last token is not in it yet)
    assert saved["n_written"] == (folder / "conv.bin").stat().st_size and saved["timings"]["save_ms"] >= 0
    for s in http.get("/slots").json():
        http.post(f"/slots/{s['id']}?action=erase")
    other = 1 - slot["id"]
    restored = http.post(f"/slots/{other}?action=restore", json={"filename": "conv.bin"}).json()
    assert (restored["id_slot"], restored["n_restored"], restored["n_read"]) == (other, saved["n_saved"], saved["n_written"])
    again = native(http, prompt, 12)
    assert again["tokens_cached"] == again["tokens_evaluated"] - 1  # all but the last prompt token came from the file
    assert again["content"] == fresh["content"]


def test_hostile_slot_files_are_refused_and_it_keeps_serving(saver):
    s, http, folder = saver
    native(http, "A slot to save", 4)
    slot = max(http.get("/slots").json(), key=lambda x: x["n_cached"])["id"]
    assert http.post(f"/slots/{slot}?action=save", json={"filename": "good.bin"}).status_code == 200
    good = (folder / "good.bin").read_bytes()
    (folder / "truncated.bin").write_bytes(good[: len(good) // 2])
    (folder / "header.bin").write_bytes(good[:12])
    (folder / "random.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "flipped.bin").write_bytes(good[:40] + bytes(b ^ 0xFF for b in good[40:200]) + good[200:])
    (folder / "empty.bin").write_bytes(b"")
    before = http.get("/slots").json()[slot]["n_cached"]
    for name in ("truncated.bin", "header.bin", "random.bin", "flipped.bin", "empty.bin"):
        r = http.post(f"/slots/{slot}?action=restore", json={"filename": name})
        assert r.status_code == 400 and r.json()["error"]["param"] == "filename", (name, r.text)
        assert s.healthy() and http.get("/slots").json()[slot]["n_cached"] == before  # (refused before reading)
    # intact files (their digest matches) whose KV state llama.cpp itself must refuse: the slot is left empty
    tokens, state, _n = slot_file.read(str(folder / "good.bin"), 1 << 30)
    bad_states = {"cut": state[: len(state) // 2], "garbage": bytes(range(256)) * 16, "none": b"",
                  "scrambled": state[:8] + bytes(b ^ 0x5A for b in state[8:64]) + state[64:],
                  "longer": state + b"\0" * 64, "too many tokens": state}
    for what, bad in bad_states.items():
        slot_file.write(str(folder / "bad.bin"), tokens * (10_000 if what == "too many tokens" else 1), bad)
        r = http.post(f"/slots/{slot}?action=restore", json={"filename": "bad.bin"})
        assert s.healthy(), (what, s.output)
        assert r.status_code == 400 and r.json()["error"]["param"] == "filename", (what, r.text)
        assert http.get("/slots").json()[slot]["n_cached"] == 0
    for name in ("../good.bin", ".hidden", "", "a/b", 5, None, "x" * 300):
        r = http.post(f"/slots/{slot}?action=save", json={"filename": name})
        assert r.status_code == 400 and r.json()["error"]["param"] == "filename", (name, r.text)
    assert http.post(f"/slots/{slot}?action=restore", json={"filename": "missing.bin"}).status_code == 404
    assert native(http, "Still serving", 3)["tokens_predicted"] == 3


def test_a_busy_slot_is_not_touched(saver):
    s, http, _folder = saver
    with httpx.stream("POST", s.url + "/completion", json={"prompt": PROMPT, "n_predict": 4000, "stream": True,
                                                         "ignore_eos": True}, timeout=60) as r:
        lines = r.iter_lines()  # (kept: a dropped iterator closes the stream, which cancels the answer)
        next(lines)
        busy = next(x for x in http.get("/slots").json() if x["is_processing"])
        refused = http.post(f"/slots/{busy['id']}?action=erase")
        assert refused.status_code == 503 and refused.json()["error"]["param"] == "id_slot"


def test_cors_star_reflects_the_origin_with_credentials(saver):
    _s, http, _folder = saver
    r = http.get("/props", headers={"Origin": "https://anywhere.example"})
    assert r.headers["access-control-allow-origin"] == "https://anywhere.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    pre = http.options("/completion", headers={"Origin": "http://10.0.0.5:3000", "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://10.0.0.5:3000"


# --- the fields llama-server's README documents (the pinned source's tools/server/README.md) -----


def readme_section(title: str) -> str:
    text = (vendor.llama_cpp_source() / "tools" / "server" / "README.md").read_text()
    start = text.index(title)
    end = text.find("\n### ", start + len(title))
    return text[start:end]


def documented_json(title: str) -> dict | list:
    section = readme_section(title)
    block = section[section.index("```json") + len("```json"):]
    return json.loads(block[:block.index("```")])


def test_completion_has_every_documented_response_field(http):
    section = readme_section("### POST `/completion`")
    documented = set(re.findall(r"^- `(\w+)`:", section[section.index("**Response format**"):], re.M))
    assert {"content", "stop", "generation_settings", "timings", "stop_type", "tokens_cached"} <= documented  # (parsed)
    got = native(http, PROMPT, 3, n_probs=2)
    assert documented <= got.keys(), documented - got.keys()


@pytest.mark.parametrize("title, url, body, leave_out", [
    # media_marker: no multimodal model is served
    ("### **GET** `/props`", "/props", None, {"media_marker"}),
    ("### POST `/slots/{id_slot}?action=erase`", "/slots/0?action=erase", None, set()),
])
def test_documented_shapes(http, title, url, body, leave_out):
    want = documented_json(title)
    got = http.get(url).json() if body is None and url == "/props" else http.post(url, json=body).json()
    assert want.keys() - leave_out <= got.keys(), want.keys() - leave_out - got.keys()
    if "default_generation_settings" in want:
        settings = got["default_generation_settings"]
        assert want["default_generation_settings"].keys() <= settings.keys()
        ours = {"n_predict", "seed", "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "repeat_penalty",
                "presence_penalty", "frequency_penalty", "stop", "max_tokens", "ignore_eos", "n_probs", "grammar", "samplers"}
        assert ours <= settings["params"].keys() and ours <= want["default_generation_settings"]["params"].keys()
        # (the names of the --samplers option's default, which the /props example predates)
        readme = (vendor.llama_cpp_source() / "tools" / "server" / "README.md").read_text()
        names = re.search(r"`--samplers SAMPLERS` \|.*?\(default: ([\w;]+)\)", readme)[1].split(";")
        assert settings["params"]["samplers"] == names


def test_metrics_has_every_documented_name(http):
    text = (vendor.llama_cpp_source() / "tools" / "server" / "README.md").read_text()
    documented = re.findall(r"^\| `(llamacpp:\w+)` \| (Counter|Gauge) \|", text, re.M)
    assert len(documented) >= 12
    native(http, "metrics", 4)
    metrics = http.get("/metrics").text
    values = {name: float(v) for name, v in re.findall(r"^(llamacpp:\w+) (\S+)$", metrics, re.M)}
    for name, kind in documented:
        if name.endswith("_per_pos_total"):  # (absent while speculative decoding is off)
            continue
        assert name in values, name
        if name != "llamacpp:n_tokens_max":  # (a counter not named _total there: a gauge here)
            assert re.search(rf"^# TYPE {name.removesuffix('_total')}(_total)? {kind.lower()}$", metrics, re.M), name
    assert values["llamacpp:prompt_seconds_total"] > 0 and values["llamacpp:tokens_predicted_seconds_total"] > 0
    assert values["llamacpp:prompt_tokens_seconds"] > 0 and values["llamacpp:predicted_tokens_seconds"] > 0
    assert 1 <= values["llamacpp:n_busy_slots_per_decode"] <= 3  # (3 slots)
    assert values["llamacpp:n_tokens_max"] >= 5  # (a prompt token and 4 generated)
    assert re.search(r'^llama_host_free_sequences\{model="default"\} 3\.0$', metrics, re.M)


def test_saved_and_restored_slots_answer_as_documented(saver):
    _s, http, _folder = saver
    native(http, "Documented shapes", 2)
    slot = max(http.get("/slots").json(), key=lambda x: x["n_cached"])["id"]
    for action in ("save", "restore"):
        want = documented_json(f"### POST `/slots/{{id_slot}}?action={action}`")
        got = http.post(f"/slots/{slot}?action={action}", json={"filename": "doc.bin"}).json()
        assert want.keys() == got.keys() and want["timings"].keys() == got["timings"].keys()


def test_slots_list_the_documented_fields(http):
    section = readme_section("### GET `/slots`")
    block = section[section.index("```json") + len("```json"):]
    want = json.loads(block[:block.index("```")])[0]
    got = http.get("/slots").json()[0]
    assert {"id", "id_task", "n_ctx", "speculative", "is_processing", "params", "next_token"} <= want.keys() & got.keys()
    assert want["next_token"].keys() <= got["next_token"].keys()
    busy = httpx.get(http.base_url.join("/slots"), params={"fail_on_no_slot": 1})
    assert busy.status_code == 200  # (a slot is free)


def test_apply_template_without_the_generation_prompt(http):
    messages = [{"role": "user", "content": "Hi"}]
    with_it = http.post("/apply-template", json={"messages": messages}).json()["prompt"]
    without = http.post("/apply-template", json={"messages": messages, "add_generation_prompt": False}).json()["prompt"]
    assert with_it.startswith(without) and len(with_it) > len(without) and without.endswith("Hi<|im_end|>\n")


# --- per-token embeddings (--pooling none) -------------------------------------------------------


@pytest.fixture(scope="module")
def per_token(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", "--pooling", "none", "default", "auto"])
    with httpx.Client(base_url=s.url, timeout=60) as client:
        yield client
    assert s.stop() == 0, s.output


def test_pooling_none_gives_a_vector_per_token_whose_mean_is_the_pooled_one(per_token, http, vocab):
    import numpy as np

    n_tokens = len(vocab.tokenize("hello world"))
    pooled = np.asarray(http.post("/v1/embeddings", json={"input": "hello world"}).json()["data"][0]["embedding"])
    for path in ("/embedding", "/embeddings"):
        got = per_token.post(path, json={"content": ["hello world", [1, 2, 3]]})
        assert got.status_code == 200, got.text
        rows = got.json()
        assert [r["index"] for r in rows] == [0, 1]
        assert [len(r["embedding"]) for r in rows] == [n_tokens, 3]
        assert {len(v) for r in rows for v in r["embedding"]} == {len(pooled)}
    # llama.cpp's mean pooling (the other server's) is the mean of these rows, then normalised
    mean = np.asarray(per_token.post("/embedding", json={"content": "hello world"}).json()[0]["embedding"]).mean(axis=0)
    assert mean / np.linalg.norm(mean) == pytest.approx(pooled, abs=1e-5)
    assert abs(np.linalg.norm(mean) - 1) > 1e-3  # (per-token vectors are the model's own scale)


def test_pooling_none_refuses_openais_embeddings_and_keeps_serving(per_token):
    for path in ("/v1/embeddings", "/embeddings"):
        r = per_token.post(path, json={"input": "hello world"})
        assert r.status_code == 400 and "--pooling none" in r.json()["error"]["message"], r.text
    too_long = per_token.post("/embedding", json={"content": "hello " * 5000})
    assert too_long.status_code == 400 and too_long.json()["error"]["type"] == "invalid_request_error", too_long.text
    assert per_token.post("/embedding", json={"content": 5}).status_code == 400
    assert per_token.post("/embedding", json={"content": "ok"}).status_code == 200


@pytest.mark.parametrize("content", [[-1], [1, 2**31 - 1], ["hi", 10**18], [[1], [2, 2**32 + 1]]])
def test_pooling_none_refuses_token_ids_outside_the_vocabulary(per_token, content):
    # (these reached llama_batch unchecked: a 500, and 2**32 + 1 wrapped around to a real token)
    r = per_token.post("/embedding", json={"content": content})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "content" and "vocabulary" in error["message"], error
    assert per_token.post("/embedding", json={"content": [1, 2]}).status_code == 200


def test_pooling_none_bounds_the_size_of_its_answer(per_token, vocab):
    from llama_host.compat.llama_server import MAX_TOKEN_EMBEDDING_NUMBERS

    n_embd = len(per_token.post("/embedding", json={"content": [1]}).json()[0]["embedding"][0])
    n_tokens = MAX_TOKEN_EMBEDDING_NUMBERS // n_embd + 1  # one token more than the answer may hold
    per_input = 1000
    content = [[1] * per_input for _ in range(-(-n_tokens // per_input))]
    r = per_token.post("/embedding", json={"content": content})
    assert r.status_code == 400 and r.json()["error"]["param"] == "content", r.text[:300]
    assert "at most" in r.json()["error"]["message"]
    assert per_token.post("/embedding", json={"content": "ok"}).status_code == 200


# --- /rerank -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rerank_server(model_path):
    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('rerank')}", "--log-level", "info", "default", "auto"])
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def reranker(rerank_server):
    with httpx.Client(base_url=rerank_server.url, timeout=60) as client:
        yield client


def test_reranks_whose_clients_left_stop_and_health_answers_meanwhile(rerank_server):
    """Reranks ran in the thread pool that /health's handler needs, and to the end for nobody:
    45 whose clients had gone kept /health from answering for half a minute."""
    body = {"query": "q " * 100, "documents": ["a document " * 20] * 1000}  # (seconds of scoring each)

    def leave(_):
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(rerank_server.url + "/rerank", json=body, timeout=1)

    answered = rerank_server.log().count("POST /rerank 200")
    with ThreadPoolExecutor(45) as pool:
        list(pool.map(leave, range(45)))
    assert httpx.get(rerank_server.url + "/health", timeout=20).status_code == 200
    deadline = time.monotonic() + 60  # (each stops at its next document)
    while rerank_server.log().count("POST /rerank 499") < 45 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rerank_server.log().count("POST /rerank 499") == 45
    assert rerank_server.log().count("POST /rerank 200") == answered


def oracle_scores(path, query, documents):
    """softmax(classification head · last hidden state)[0] with numpy: llama.cpp's last-token
    pooling for the hidden state, the head read from the GGUF."""
    import gguf
    import numpy as np

    from llama_host.compat.llama_server import rerank_tokens
    from llama_host.engine import lib
    from llama_host.engine.embed import Embedder

    head = next(t for t in gguf.GGUFReader(path).tensors if t.name == "cls.output.weight").data.astype(np.float64)
    with Model(path) as m, Embedder(m, n_ctx=512, pooling=lib.C.LLAMA_POOLING_TYPE_LAST) as last:
        out = []
        for doc in documents:
            logits = head @ last.pooled(rerank_tokens(m, query, doc)).astype(np.float64)
            out.append(float(np.exp(logits[0]) / np.exp(logits).sum()))
    return out


def test_rerank_orders_documents_by_the_models_scores(reranker, model_path):
    query, docs = "hello world", ["the answer", "hello world", "many people write water", "a question"]
    want = oracle_scores(model_path("rerank"), query, docs)
    for path in ("/rerank", "/v1/rerank", "/reranking", "/v1/reranking"):
        got = reranker.post(path, json={"query": query, "documents": docs, "top_n": 3, "return_text": True})
        assert got.status_code == 200, got.text
        body = got.json()
        order = sorted(range(len(docs)), key=lambda i: -want[i])[:3]
        assert [r["index"] for r in body["results"]] == order
        assert [r["relevance_score"] for r in body["results"]] == pytest.approx([want[i] for i in order], abs=1e-4)
        assert [r["document"]["text"] for r in body["results"]] == [docs[i] for i in order]
        assert body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
    objects = reranker.post("/v1/rerank", json={"query": query, "documents": [{"text": d} for d in docs]}).json()
    assert len(objects["results"]) == 4 and "document" not in objects["results"][0]


@pytest.mark.parametrize("body, param", [
    ({"documents": ["a"]}, "query"),
    ({"query": "q"}, "documents"),
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": [5]}, "documents[0]"),
    ({"query": "q", "documents": ["a"] * 2000}, "documents"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ({"query": "q", "documents": ["a", "q " * 5000]}, "documents[1]"),  # (longer than the context)
])
def test_bad_rerank_requests_are_a_400(reranker, body, param):
    r = reranker.post("/rerank", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_rerank_needs_a_reranker(http):
    r = http.post("/rerank", json={"query": "q", "documents": ["a"]})
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"


def test_a_rerank_template_fills_its_places_in_one_pass(vocab):
    from llama_host.compat.llama_server import rerank_tokens

    class WithRerankTemplate:  # (the model's tokenizer, under a GGUF rerank template)
        def chat_template(self, name):
            return "<q>{query}</q><d>{document}</d>" if name == "rerank" else None

        def tokenize(self, text):
            return vocab.tokenize(text)

    # A query that spells a place is text: the document went into it before.
    tokens = rerank_tokens(WithRerankTemplate(), "about {document}", "DOC")
    assert tokens == vocab.tokenize("<q>about {document}</q><d>DOC</d>")
