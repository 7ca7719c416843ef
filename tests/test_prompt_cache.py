"""The prompt cache: conversations whose sequence went to another request keep their KV state
in host memory and get it back on their next turn, with the same greedy output as evaluating
the whole conversation afresh (an engine without the cache is the oracle)."""

from __future__ import annotations

import pytest

from llama_host.engine import Engine, EngineConfig, GenerationRequest, Model
from llama_host.engine.prompt_cache import MIN_ENTRY_TOKENS, RESERVE_BYTES, PromptCache, common_prefix

# --- the cache alone ---------------------------------------------------------------------------


def tokens(start: int, n: int = 32) -> list[int]:
    return list(range(start, start + n))


def test_the_longest_shared_prefix_is_taken_out():
    cache = PromptCache(1 << 20)
    assert cache.put(tokens(0), b"a" * 100) and cache.put(tokens(1000), b"b" * 100)
    assert cache.take(tokens(1000, 10) + [7], more_than=10) is None  # (10 shared: not more than 10)
    entry = cache.take(tokens(1000, 20) + [7], more_than=10)
    assert entry.tokens == tokens(1000) and entry.state == b"b" * 100
    assert len(cache) == 1 and cache.take(tokens(1000), more_than=0) is None  # (it left the cache)
    assert cache.stats.bytes == 100 + 4 * 32 and cache.stats.saved == 2


def test_least_recently_used_states_make_room():
    size = 1000 + 4 * 32
    cache = PromptCache(2 * size)
    for i in range(3):
        assert cache.put(tokens(100 * i), bytes(1000))
    assert len(cache) == 2 and cache.stats.evicted == 1 and cache.stats.bytes == 2 * size
    assert cache.take(tokens(0), more_than=0) is None  # the oldest went
    assert cache.take(tokens(100), more_than=0) is not None


def test_what_does_not_fit_or_is_too_short_is_not_kept():
    cache = PromptCache(500)
    assert not cache.put(tokens(0), bytes(1000))  # larger than the whole budget
    assert not cache.put(tokens(0, MIN_ENTRY_TOKENS - 1), b"x")  # re-evaluated faster than restored
    assert not cache.put(tokens(0), b"")  # llama.cpp serialised nothing
    low = PromptCache(1 << 30, available=lambda: RESERVE_BYTES + 100)  # the host is short of memory
    assert not low.put(tokens(0), bytes(1000)) and len(low) == 0


def test_an_entry_another_extends_is_dropped():
    cache = PromptCache(1 << 20)
    cache.put(tokens(0, 20), b"short")
    cache.put(tokens(0, 40), b"long")  # the same conversation, a turn later
    assert len(cache) == 1 and cache.take(tokens(0, 20), more_than=0).state == b"long"
    cache.put(tokens(0, 40), b"long")
    assert cache.put(tokens(0, 20), b"short") and len(cache) == 1  # already held by the longer one


# --- in the engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(model_path):
    with Model(model_path("spm")) as m:
        yield m


def conversations(model: Model) -> list[list[int]]:
    system = "[INST] <<SYS>> You are a careful assistant who answers in full sentences. <</SYS>> "
    return [model.tokenize(system + f"Tell me about {topic}. [/INST]") for topic in ("llamas", "rivers", "stars")]


def replay(engine: Engine, model: Model) -> list[tuple[list[int], object]]:
    """Three conversations of two turns, interleaved, through one sequence: every turn's slot
    held another conversation before it."""
    firsts = conversations(model)
    answers, out = [], []
    for prompt in firsts:
        handle = engine.submit(GenerationRequest(prompt, max_tokens=12, ignore_eos=True))
        answers.append([o.token for o in handle if o.token >= 0])
        out.append((answers[-1], handle.result))
    for prompt, answer in zip(firsts, answers):
        second = prompt + answer + model.tokenize(" And then? [/INST]", add_bos=False)
        handle = engine.submit(GenerationRequest(second, max_tokens=12, ignore_eos=True))
        out.append(([o.token for o in handle if o.token >= 0], handle.result))
    return out


def test_a_conversation_back_from_host_memory_answers_as_evaluated_afresh(model):
    config = EngineConfig(ctx_size=512, parallel=1, batch_size=64)
    with Engine(model, config) as plain:
        fresh = replay(plain, model)
    with Engine(model, EngineConfig(ctx_size=512, parallel=1, batch_size=64, cache_bytes=64 << 20)) as cached:
        warm = replay(cached, model)
        stats = cached.stats()
    assert [t for t, _ in warm] == [t for t, _ in fresh]  # the same greedy tokens, turn by turn
    firsts = conversations(model)
    for (_, result), prompt, (answer, _) in zip(warm[3:], firsts, warm):
        # the whole first turn came back (all but the answer's last token, never decoded)
        assert result.cached_tokens == len(prompt) + len(answer) - 1
    system = common_prefix(firsts[0], firsts[1])
    assert 0 < system < len(firsts[0]) - 4
    for _, result in fresh[3:]:  # without the cache: only the system prompt the conversations share
        assert result.cached_tokens <= system
    assert stats.prompt_cache_hits == 3
    assert stats.prompt_cache_tokens == sum(r.cached_tokens for _, r in warm[3:])
    assert stats.prompt_cache_entries >= 1 and stats.prompt_cache_bytes > 0


def test_a_budget_too_small_for_one_state_changes_nothing(model):
    with Engine(model, EngineConfig(ctx_size=512, parallel=1, batch_size=64)) as plain:
        fresh = replay(plain, model)
    with Engine(model, EngineConfig(ctx_size=512, parallel=1, batch_size=64, cache_bytes=1024)) as tiny:
        warm = replay(tiny, model)
        stats = tiny.stats()
    assert [t for t, _ in warm] == [t for t, _ in fresh]
    assert stats.prompt_cache_hits == 0 and stats.prompt_cache_entries == 0


def test_an_empty_sequence_is_taken_before_a_conversation_is_overwritten(model):
    """A new prompt that shares nothing (or a BOS) with the sequences goes to an empty one."""
    with Engine(model, EngineConfig(ctx_size=512, parallel=2, batch_size=64)) as engine:
        first = conversations(model)[0]
        engine.generate(GenerationRequest(first, max_tokens=4))
        engine.generate(GenerationRequest(model.tokenize("Something else entirely."), max_tokens=4))
        again = engine.submit(GenerationRequest(first, max_tokens=4))
        again.text()
        assert again.result.cached_tokens == len(first) - 1


# --- a live server -----------------------------------------------------------------------------


def test_a_server_keeps_conversations_warm_past_its_one_slot(model_path):
    import httpx

    from live import Server

    s = Server([f"--nn-preload=default:GGML:CPU:{model_path('spm')}", "--parallel", "1", "--cache-ram", "64",
                "default", "llama-2-chat"])
    try:
        with httpx.Client(base_url=s.url, timeout=60) as http:
            def chat(messages):
                r = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "temperature": 0})
                assert r.status_code == 200, r.text
                return r.json()

            system = {"role": "system", "content": "You are a careful assistant who answers in full sentences."}
            talks = [[system, {"role": "user", "content": f"Tell me about {t}."}] for t in ("llamas", "rivers")]
            firsts = [chat(t) for t in talks]  # the second evicts the first from the slot
            talk = talks[0] + [firsts[0]["choices"][0]["message"], {"role": "user", "content": "And then?"}]
            again = chat(talk)
            cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached >= firsts[0]["usage"]["prompt_tokens"]  # the whole first turn came back
            metrics = http.get("/metrics").text
            hits = next(line for line in metrics.splitlines() if line.startswith("llama_host_prompt_cache_hits_total"))
            assert float(hits.split()[-1]) == 1
    finally:
        assert s.stop() == 0, s.output
