"""The batching engine against real models in the real llama.cpp."""

from __future__ import annotations

import functools
import json
import threading

import numpy as np
import pytest
from llama_cpp import Llama

from llama_host.engine import Engine, EngineConfig, FinishReason, GenerationRequest, Model, SamplingParams
from llama_host.engine.context import Context
from llama_host.engine.embed import Embedder
from llama_host.engine.generate import generate
from llama_host.engine.sampling import GREEDY, grammar_from_json_schema
from llama_host.errors import InvalidGrammar, PromptTooLong, QueueFull

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):",
    "Ünïcödé, 日本語 and 🦙: three scripts in one prompt.",
]


def run_all(engine: Engine, requests: list[GenerationRequest]) -> list[tuple[list[int], str, object]]:
    """Submit all at once, consume concurrently; per request: tokens, text, result."""
    handles = [engine.submit(r) for r in requests]
    out: list = [None] * len(handles)

    def consume(i):
        items = list(handles[i])
        out[i] = ([o.token for o in items if o.token >= 0], "".join(o.text for o in items), handles[i].result)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(handles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.fixture(scope="module")
def spm_engine(model_path):
    with Model(model_path("spm")) as model, Engine(model, EngineConfig(ctx_size=512, parallel=4, batch_size=64)) as eng:
        yield eng


@pytest.fixture(scope="module", params=["tiny", "spm-q4_0"])
def engine_and_model(request, model_path):
    preset, _, quant = request.param.partition("-")
    with Model(model_path(preset, quant or None)) as model:
        with Engine(model, EngineConfig(ctx_size=512, parallel=4, batch_size=64)) as eng:
            yield eng, model


# --- batching: same output alone or together, far fewer decode calls ---------------------------


def test_greedy_output_is_the_same_alone_or_beside_three_others(engine_and_model):
    engine, model = engine_and_model
    requests = [GenerationRequest(model.tokenize(p), max_tokens=24, ignore_eos=True) for p in PROMPTS]
    alone = [run_all(engine, [r])[0][0] for r in requests]
    together = [tokens for tokens, _, _ in run_all(engine, requests)]
    assert together == alone
    assert all(len(t) == 24 for t in alone)


def test_engine_matches_the_single_sequence_reference(model_path):
    """The scheduler's tokens equal the plain one-sequence loop's (checked against llama-cpp-python
    in test_oracle), for a prompt longer than a batch, so prompt chunking is covered too."""
    with Model(model_path("spm")) as model:
        prompt = model.tokenize("Once upon a time, " * 30)
        assert len(prompt) > 64
        with Context(model, n_ctx=512, n_batch=64) as ctx:
            reference = generate(ctx, prompt, max_tokens=20)
        with Engine(model, EngineConfig(ctx_size=512, parallel=2, batch_size=64)) as engine:
            tokens = [o.token for o in engine.submit(GenerationRequest(prompt, max_tokens=20)) if o.token >= 0]
    assert tokens == reference


def test_a_request_for_a_busy_slot_waits_for_it_and_lets_others_pass(model_path):
    with Model(model_path("spm")) as model, Engine(model, EngineConfig(ctx_size=256, parallel=2, batch_size=64)) as eng:
        long = eng.submit(GenerationRequest(model.tokenize(PROMPTS[0]), max_tokens=200, ignore_eos=True, slot=0))
        next(iter(long))  # (it has slot 0 now)
        pinned = eng.submit(GenerationRequest(model.tokenize(PROMPTS[1]), max_tokens=2, ignore_eos=True, slot=0))
        free = eng.submit(GenerationRequest(model.tokenize(PROMPTS[2]), max_tokens=2, ignore_eos=True))
        free.text()
        assert free.result.slot == 1 and long.result is None and pinned.result is None
        pinned.text()
        long.text()
        assert (long.result.slot, pinned.result.slot) == (0, 0)
        with pytest.raises(ValueError, match="no sequence 2"):
            eng.submit(GenerationRequest(model.tokenize(PROMPTS[0]), slot=2))


def test_requests_waiting_for_a_pinned_slot_do_not_fill_the_queue_for_the_others(model_path):
    # (with --queue-size 2, two requests pinned to a busy slot made every other one a 503)
    config = EngineConfig(ctx_size=256, parallel=2, batch_size=64, queue_size=1)
    with Model(model_path("spm")) as model, Engine(model, config) as eng:
        request = functools.partial(GenerationRequest, model.tokenize(PROMPTS[0]), ignore_eos=True)
        long = eng.submit(request(max_tokens=200, slot=0))
        next(iter(long))
        waiting = eng.submit(request(max_tokens=1, slot=0))
        with pytest.raises(QueueFull):
            eng.submit(request(max_tokens=1, slot=0))
        free = eng.submit(request(max_tokens=2))
        free.text()
        assert free.result.slot == 1 and waiting.result is None
        long.cancel()
        waiting.text()
        assert waiting.result.slot == 0


def test_concurrent_requests_are_batched(spm_engine):
    model = spm_engine.model
    before = spm_engine.stats()
    requests = [GenerationRequest(model.tokenize(p), max_tokens=32, ignore_eos=True) for p in PROMPTS]
    results = run_all(spm_engine, requests)
    after = spm_engine.stats()
    generated = sum(len(tokens) for tokens, _, _ in results)
    assert generated == 4 * 32
    assert after.generated_tokens - before.generated_tokens == generated
    calls = after.decode_calls - before.decode_calls
    # Alone, each token costs one llama_decode call (plus one per prompt): 132 calls; batched,
    # about a quarter (36), a few more when a loaded machine starts the request threads late.
    assert calls <= (4 * 32 + 4) // 2, calls


def test_long_prompt_is_chunked_and_does_not_stall_decoding(model_path):
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=2048, parallel=2, batch_size=32)) as engine:
        short = engine.submit(GenerationRequest(model.tokenize("hello"), max_tokens=500, ignore_eos=True))
        assert short.next(timeout=30) is not None  # the short request is decoding
        long_prompt = model.tokenize(" ".join(["hello world"] * 300))
        before = engine.stats()
        long = engine.submit(GenerationRequest(long_prompt, max_tokens=1, ignore_eos=True))
        long.text()
        after = engine.stats()
        short.cancel()
        list(short)
    steps = after.decode_calls - before.decode_calls
    # 601 prompt tokens in 32-token batches that also carry the decoding sequence's token: about
    # 601/31 steps, and the short request got a token in every one of them (+1: the long one's).
    assert long.result.finish_reason is FinishReason.LENGTH
    assert steps >= len(long_prompt) // 31
    assert after.generated_tokens - before.generated_tokens >= steps
    assert after.prompt_tokens - before.prompt_tokens == len(long_prompt)


# --- prefix cache -------------------------------------------------------------------------------


def test_second_turn_evaluates_only_the_new_tokens(spm_engine):
    model = spm_engine.model
    first = model.tokenize("[INST] Tell me a story about a llama. [/INST]")
    tokens, _, result1 = run_all(spm_engine, [GenerationRequest(first, max_tokens=16, ignore_eos=True)])[0]
    assert result1.cached_tokens == 0 or result1.cached_tokens < len(first)
    turn = model.tokenize(" And then? [/INST]", add_bos=False)
    second = first + tokens + turn
    before = spm_engine.stats()
    _, _, result2 = run_all(spm_engine, [GenerationRequest(second, max_tokens=4, ignore_eos=True)])[0]
    after = spm_engine.stats()
    # Everything but the generated tokens' last one (never decoded) and the new turn is reused.
    assert result2.cached_tokens == len(first) + len(tokens) - 1
    assert after.prompt_tokens - before.prompt_tokens == len(turn) + 1
    assert after.cached_tokens - before.cached_tokens == result2.cached_tokens


def test_identical_prompt_reuses_all_but_one_token(spm_engine):
    prompt = spm_engine.model.tokenize("Repeat after me: the same prompt twice.")
    r1 = run_all(spm_engine, [GenerationRequest(prompt, max_tokens=8)])[0]
    r2 = run_all(spm_engine, [GenerationRequest(prompt, max_tokens=8)])[0]
    assert r2[2].cached_tokens == len(prompt) - 1
    assert r1[0] == r2[0]  # and the reused cache gives the same greedy tokens


# --- ending -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["spm", "tiny", "bpe"])
def test_a_twin_of_a_running_request_copies_its_cells(model_path, preset):
    """A request whose prompt a busy sequence holds starts from a copy of that sequence (the
    choices of n > 1): it evaluates one token, and its greedy output is the solo one."""
    with Model(model_path(preset)) as model, Engine(model, EngineConfig(ctx_size=512, parallel=3, batch_size=64)) as eng:
        prompt = model.tokenize("The capital of France is a city that many people visit every year, " * 3)
        request = GenerationRequest(prompt, max_tokens=16, ignore_eos=True)
        solo, _ = eng.generate(request)
        for filler in (100, 101, 102):  # the solo's slot is not reused: every slot holds something else
            eng.generate(GenerationRequest([filler], max_tokens=1))
        first = eng.submit(request)
        head = first.next()
        assert first.result is None and head.token >= 0  # busy, its prompt in the cache
        twin = eng.submit(request)
        assert twin.text() == solo and head.text + first.text() == solo
        assert twin.result.cached_tokens == len(prompt) - 1 and first.result.cached_tokens < 8


def test_logprobs_of_a_stopped_or_held_back_token_come_with_its_text(spm_engine):
    """A token's log-probability is released with the last of its text; a stop string's tokens have none."""
    prompt = spm_engine.model.tokenize("Once upon a time")
    full = list(spm_engine.submit(GenerationRequest(prompt, max_tokens=12, ignore_eos=True, logprobs=2)))
    assert sum(len(o.logprobs) for o in full) == 12 and all(len(lp.top) == 2 for o in full for lp in o.logprobs)
    text = "".join(o.text for o in full)
    stop = text[5:8]
    cut = list(spm_engine.submit(GenerationRequest(prompt, max_tokens=12, ignore_eos=True, logprobs=0, stop=[stop])))
    released = [lp.token for o in cut for lp in o.logprobs]
    kept = spm_engine.model.detokenize(released)
    assert "".join(o.text for o in cut).startswith(kept) and stop not in kept
    assert released == [lp.token for o in full for lp in o.logprobs][: len(released)]


def test_stop_string_split_across_tokens_is_never_emitted(spm_engine):
    model = spm_engine.model
    prompt = model.tokenize("Once upon a time")
    tokens, text, _ = run_all(spm_engine, [GenerationRequest(prompt, max_tokens=30, ignore_eos=True)])[0]
    # A stop string that starts inside one token's text and ends inside a later one.
    pieces = [model.piece(t).decode("utf-8", "replace") for t in tokens]
    boundary = len(pieces[0]) + len(pieces[1])
    stop = text[boundary - 2 : boundary + 3]
    assert len(stop) == 5
    handle = spm_engine.submit(GenerationRequest(prompt, max_tokens=30, ignore_eos=True, stop=[stop, "never-there"]))
    outputs = list(handle)
    streamed = "".join(o.text for o in outputs)
    assert streamed == text[: text.index(stop)]
    assert handle.result.finish_reason is FinishReason.STOP and handle.result.stop == stop


def test_max_tokens_and_ignore_eos(spm_engine):
    prompt = spm_engine.model.tokenize("Count: one two three")
    tokens, _, result = run_all(spm_engine, [GenerationRequest(prompt, max_tokens=7, ignore_eos=True)])[0]
    assert len(tokens) == 7 and result.completion_tokens == 7
    assert result.finish_reason is FinishReason.LENGTH and not result.context_full
    assert result.prompt_tokens == len(prompt)


def test_end_of_generation_token_stops(model_path):
    # Forcing the first token to be EOS (logit bias) must end at once with "stop".
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=256, parallel=1)) as engine:
        eos = model.info.eos_id
        params = SamplingParams(temperature=0.0, logit_bias={eos: 1000.0})
        tokens, text, result = run_all(engine, [GenerationRequest(model.tokenize("hello"), params, max_tokens=10)])[0]
        assert (tokens, text, result.finish_reason, result.completion_tokens) == ([], "", FinishReason.STOP, 0)
        # ...and ignore_eos overrides even that bias.
        tokens, _, result = run_all(engine, [GenerationRequest(model.tokenize("hello"), params, max_tokens=10,
                                                               ignore_eos=True)])[0]
        assert len(tokens) == 10 and eos not in tokens


def test_context_fills_during_generation(model_path):
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=256, parallel=2)) as engine:
        assert engine.n_ctx_seq == 256
        prompt = model.tokenize(" ".join(["hello world"] * 120))  # 241 tokens
        tokens, _, result = run_all(engine, [GenerationRequest(prompt, ignore_eos=True)])[0]
        assert result.finish_reason is FinishReason.LENGTH
        assert len(prompt) + len(tokens) == engine.n_ctx_seq + 1
        assert result.context_full


def test_prompt_too_long_is_rejected_up_front(spm_engine):
    prompt = [1] + [450] * 600
    with pytest.raises(PromptTooLong) as err:
        spm_engine.submit(GenerationRequest(prompt))
    assert (err.value.n_prompt, err.value.n_ctx) == (601, 512)
    assert "601 tokens" in str(err.value) and "512" in str(err.value)


# --- sampling -----------------------------------------------------------------------------------


def test_seed_reproduces_and_differs(spm_engine):
    prompt = spm_engine.model.tokenize("Once upon a time")

    def sample(seed):
        params = SamplingParams(temperature=1.2, top_k=100, top_p=0.95, seed=seed)
        return run_all(spm_engine, [GenerationRequest(prompt, params, max_tokens=20, ignore_eos=True)])[0][0]

    a, b, c = sample(42), sample(42), sample(43)
    assert a == b
    assert a != c


def test_seeded_sampling_is_the_same_beside_others(spm_engine):
    model = spm_engine.model
    params = SamplingParams(temperature=1.0, seed=7)
    req = GenerationRequest(model.tokenize(PROMPTS[0]), params, max_tokens=16, ignore_eos=True)
    alone = run_all(spm_engine, [req])[0][0]
    others = [GenerationRequest(model.tokenize(p), params, max_tokens=16, ignore_eos=True) for p in PROMPTS[1:]]
    assert run_all(spm_engine, [req, *others])[0][0] == alone


def test_logit_bias_bans_and_forces(spm_engine):
    prompt = spm_engine.model.tokenize("The capital of France is")
    greedy, _, _ = run_all(spm_engine, [GenerationRequest(prompt, max_tokens=3, ignore_eos=True)])[0]
    banned = SamplingParams(temperature=0.0, logit_bias={greedy[0]: float("-inf")})
    tokens, _, _ = run_all(spm_engine, [GenerationRequest(prompt, banned, max_tokens=3, ignore_eos=True)])[0]
    assert tokens[0] != greedy[0]
    forced = SamplingParams(temperature=0.0, logit_bias={1234: 100.0})
    tokens, _, _ = run_all(spm_engine, [GenerationRequest(prompt, forced, max_tokens=3, ignore_eos=True)])[0]
    assert tokens == [1234, 1234, 1234]


def test_penalties_and_dry_count_the_prompts_tokens_as_llama_servers_do(model_path):
    """llama-server feeds the prompt to its sampler before the first draw, so a repeat penalty
    (or DRY) already holds against the prompt's tokens; llama-host's only saw drawn ones."""
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=256, parallel=1)) as eng:
        prompt = model.tokenize(PROMPTS[0])
        drawn = [o.token for o in eng.submit(GenerationRequest(prompt, max_tokens=40, ignore_eos=True)) if o.token >= 0]
        # a point where greedy draws a token the text before it holds (the random model loops)
        k = next(k for k in range(1, len(drawn)) if drawn[k] in drawn[max(0, k - 32):k])
        context = prompt + drawn[:k]
        for params in (SamplingParams(temperature=0.0, repeat_penalty=100.0),
                       SamplingParams(temperature=0.0, dry_multiplier=100.0, dry_allowed_length=0, dry_sequence_breakers=())):
            first = [o.token for o in eng.submit(GenerationRequest(context, params, max_tokens=1, ignore_eos=True))]
            assert first[0] != drawn[k], params
        plain = [o.token for o in eng.submit(GenerationRequest(context, max_tokens=1, ignore_eos=True))]
        assert plain == [drawn[k]]


def test_presence_penalty_prevents_repeats(spm_engine):
    prompt = spm_engine.model.tokenize("la la la la")
    params = SamplingParams(temperature=0.0, presence_penalty=1000.0, penalty_last_n=64)
    tokens, _, _ = run_all(spm_engine, [GenerationRequest(prompt, params, max_tokens=40, ignore_eos=True)])[0]
    assert len(set(tokens)) == len(tokens) == 40
    plain, _, _ = run_all(spm_engine, [GenerationRequest(prompt, max_tokens=40, ignore_eos=True)])[0]
    assert len(set(plain)) < len(plain)  # the random model does repeat itself without it


def test_grammar_constrains_output(spm_engine):
    prompt = spm_engine.model.tokenize("Answer yes or no:")
    params = SamplingParams(temperature=1.0, seed=3, grammar='root ::= ("yes" | "no") "."')
    for _ in range(3):
        _, text, result = run_all(spm_engine, [GenerationRequest(prompt, params, max_tokens=20)])[0]
        assert text.strip() in ("yes.", "no."), text
        assert result.finish_reason is FinishReason.STOP


def test_json_schema_output_parses(spm_engine):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["name", "age", "ok"],
    }
    grammar = grammar_from_json_schema(json.dumps(schema))
    prompt = spm_engine.model.tokenize("Give me JSON:")
    params = SamplingParams(temperature=0.7, seed=11, grammar=grammar)
    _, text, result = run_all(spm_engine, [GenerationRequest(prompt, params, max_tokens=200)])[0]
    assert result.finish_reason is FinishReason.STOP, text
    value = json.loads(text)
    assert set(value) == {"name", "age", "ok"} and isinstance(value["age"], int) and isinstance(value["ok"], bool)


def test_schema_strings_never_hold_raw_control_characters(engine_and_model):
    """JSON forbids control characters raw in strings; the byte tokens of a random model draw
    them, and a converter that lets them through writes JSON nothing parses."""
    engine, model = engine_and_model
    schema = {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 6, "maxItems": 6}
    grammar = grammar_from_json_schema(json.dumps(schema))
    prompt = model.tokenize("Strings:")
    requests = [GenerationRequest(prompt, SamplingParams(temperature=1.5, seed=seed, grammar=grammar), max_tokens=300)
                for seed in range(8)]
    for _, text, result in run_all(engine, requests):
        assert result.finish_reason is FinishReason.STOP, text
        assert len(json.loads(text)) == 6


def test_a_lazy_grammar_holds_from_its_trigger_on(engine_and_model):
    """Until the trigger word the draws are those of a grammar that never engages; from the
    token that ends the word the grammar holds; a word whose token goes on with text the grammar
    refuses leaves it waiting, and nothing breaks."""
    engine, model = engine_and_model
    prompt = model.tokenize("Once upon a time")

    def run(grammar, triggers):
        params = SamplingParams(temperature=1.0, seed=7, grammar=grammar, grammar_triggers=triggers)
        return run_all(engine, [GenerationRequest(prompt, params, max_tokens=24, ignore_eos=True)])[0]

    free, free_text, _ = run('root ::= "unused"', ("\x07never",))
    pieces = [model.piece(t, special=True) for t in free]
    k = next(i for i, p in enumerate(pieces) if i >= 3 and len(p) >= 2 and p.isascii() and b'"' not in p)
    word = pieces[k].decode()
    before = b"".join(pieces[:k]).decode()
    tokens, text, result = run(f'root ::= "{word}" "XYZ"', (word,))
    assert tokens[:k + 1] == free[:k + 1]
    assert text.startswith(before + word) and before + word not in text[:len(before)]
    # the first occurrence is at token k unless the word appeared earlier inside a token
    if word not in before:
        assert text == before + word + "XYZ" and result.finish_reason is FinishReason.STOP, text
    # a trigger inside the token whose rest the grammar refuses: waiting again, free as before
    half = word[:1]
    _, text, result = run(f'root ::= "{half}" "\\x01"', (half,))
    assert result.finish_reason is FinishReason.LENGTH and "\x01" not in text


@pytest.mark.parametrize("grammar", ["root ::= \"unterminated", "root ::= undefined_rule", "not a grammar", 'rule ::= "x"', "root ::= [a-"])
def test_bad_grammar_fails_the_call(spm_engine, grammar):
    prompt = spm_engine.model.tokenize("x")
    with pytest.raises(InvalidGrammar):
        spm_engine.submit(GenerationRequest(prompt, SamplingParams(grammar=grammar)))
    assert spm_engine.generate(GenerationRequest(prompt, max_tokens=2, ignore_eos=True))[1].completion_tokens == 2


@pytest.mark.parametrize("schema", ["{not json", "[1, 2", '{"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}'])
def test_bad_json_schema(schema):
    with pytest.raises(InvalidGrammar):
        grammar_from_json_schema(schema)


# --- text ---------------------------------------------------------------------------------------


def test_streamed_pieces_equal_the_full_text_and_are_valid_utf8(engine_and_model):
    engine, model = engine_and_model
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    for prompt in PROMPTS:
        req = GenerationRequest(model.tokenize(prompt), params, max_tokens=64, ignore_eos=True)
        handle = engine.submit(req)
        outputs = list(handle)
        streamed = "".join(o.text for o in outputs)
        text, _ = engine.generate(req)
        assert streamed == text
        streamed.encode("utf-8")  # no lone surrogates
        raw = b"".join(model.piece(o.token) for o in outputs if o.token >= 0)
        assert text == raw.decode("utf-8", "replace")


def test_switching_from_streaming_to_text_keeps_every_piece_in_order(spm_engine):
    # text() stops the per-token wake-ups mid-request: what was queued before the switch and
    # what the engine collects after it must join up exactly, wherever the switch falls.
    model = spm_engine.model
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=11)
    req = GenerationRequest(model.tokenize(PROMPTS[3]), params, max_tokens=96, ignore_eos=True)
    reference = "".join(o.text for o in spm_engine.submit(req))
    assert len(reference) > 96
    for switch_after in (0, 1, 7, 40, 95, 96):
        handle = spm_engine.submit(req)
        head = [handle.next().text for _ in range(switch_after)]
        assert "".join(head) + handle.text() == reference, switch_after
        assert handle.result.completion_tokens == 96


def test_random_bytes_model_produces_replacement_characters(model_path):
    """The tiny model emits byte tokens freely: some are invalid UTF-8 and must become U+FFFD."""
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=1024, parallel=1)) as engine:
        params = SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
        text, result = engine.generate(GenerationRequest(model.tokenize("hello"), params, max_tokens=300,
                                                         ignore_eos=True))
        assert result.completion_tokens == 300
        assert "\ufffd" in text


# --- cancellation, queue ------------------------------------------------------------------------


def test_cancel_frees_the_sequence(model_path):
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=2048, parallel=1)) as engine:
        endless = engine.submit(GenerationRequest(model.tokenize("hello"), ignore_eos=True))
        for _ in range(3):
            assert endless.next(timeout=30) is not None
        endless.cancel()
        rest = list(endless)
        assert endless.result.finish_reason is FinishReason.CANCELLED
        assert len(rest) <= 2  # at most the token of the step already under way
        text, result = engine.generate(GenerationRequest(model.tokenize("world"), max_tokens=3, ignore_eos=True))
        assert result.completion_tokens == 3
        assert engine.stats().busy_sequences == 0


def test_cancel_while_waiting(model_path):
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=2048, parallel=1)) as engine:
        running = engine.submit(GenerationRequest(model.tokenize("hello"), ignore_eos=True))
        assert running.next(timeout=30) is not None
        waiting = engine.submit(GenerationRequest(model.tokenize("world"), max_tokens=5))
        waiting.cancel()
        assert list(waiting) == [] and waiting.result.finish_reason is FinishReason.CANCELLED
        assert waiting.result.completion_tokens == 0
        running.cancel()
        list(running)


def test_queue_full(model_path):
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=2048, parallel=1, queue_size=1)) as engine:
        running = engine.submit(GenerationRequest(model.tokenize("hello"), ignore_eos=True))
        assert running.next(timeout=30) is not None
        waiting = engine.submit(GenerationRequest(model.tokenize("a"), max_tokens=2, ignore_eos=True))
        with pytest.raises(QueueFull) as err:
            engine.submit(GenerationRequest(model.tokenize("b"), max_tokens=2))
        assert err.value.limit == 1
        assert engine.stats().queue_depth == 1
        running.cancel()
        waiting.text()
        assert waiting.result.completion_tokens == 2


def test_close_ends_every_request(model_path):
    with Model(model_path("tiny")) as model:
        engine = Engine(model, EngineConfig(ctx_size=2048, parallel=1))
        running = engine.submit(GenerationRequest(model.tokenize("hello"), ignore_eos=True))
        waiting = engine.submit(GenerationRequest(model.tokenize("world"), ignore_eos=True))
        engine.close()
        list(running), list(waiting)
        assert running.result.finish_reason is FinishReason.CANCELLED
        assert waiting.result.finish_reason is FinishReason.CANCELLED


# --- embeddings ---------------------------------------------------------------------------------


def test_embeddings_equal_llama_cpp_python(model_path):
    path = model_path("spm")
    texts = ["Hello world", "A completely different sentence about llamas.", "Hello world"]
    with Model(path) as model, Embedder(model, n_ctx=512, flash_attn=True) as embedder:
        ours = embedder.embed(texts)
        counts = [len(model.tokenize(t)) for t in texts]
    vectors = np.array([v for v, _ in ours])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    assert [n for _, n in ours] == counts
    # flash attention on both sides: the kernels round differently (see test_oracle)
    llm = Llama(str(path), embedding=True, pooling_type=1, n_ctx=512, n_batch=512, flash_attn=True, verbose=False)
    try:
        theirs = np.array(llm.embed(texts, normalize=True))
    finally:
        llm.close()
    assert np.allclose(vectors, theirs, atol=1e-4)


def test_embedding_input_too_long(model_path):
    with Model(model_path("tiny")) as model, Embedder(model, n_ctx=256) as embedder:
        with pytest.raises(PromptTooLong):
            embedder.embed([" ".join(["hello"] * 300)])
        assert embedder.embed(["hello"])[0][1] == 2


def test_a_failed_decode_fails_its_requests_and_the_engine_goes_on(model_path):
    from llama_host.engine.context import DecodeError
    from llama_host.errors import EngineFailure

    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=512, parallel=2)) as engine:
        real_decode = engine.ctx.decode
        calls = {"n": 0}

        def failing_once(batch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise DecodeError(-3)  # what llama_decode returns when a compute fails
            real_decode(batch)

        engine.ctx.decode = failing_once
        handle = engine.submit(GenerationRequest(model.tokenize("hello"), max_tokens=4, ignore_eos=True))
        assert list(handle) == []
        assert handle.result.finish_reason is FinishReason.ERROR
        assert isinstance(handle.result.error, EngineFailure) and "-3" in str(handle.result.error)
        text, result = engine.generate(GenerationRequest(model.tokenize("hello"), max_tokens=4, ignore_eos=True))
        assert result.completion_tokens == 4 and result.cached_tokens == 0


def test_scored_prompt_chunks_are_bounded_by_their_logits_memory(model_path, monkeypatch):
    """Echo with logprobs needs logits for every prompt token, which llama.cpp holds at once:
    chunks are cut to PROMPT_LOGITS_BYTES of them (a 256k vocabulary and a 512-token batch
    would otherwise ask for 512 MiB), with the same numbers."""
    from llama_host.engine import engine as engine_module

    with Model(model_path("spm")) as model, Engine(model, EngineConfig(ctx_size=512, parallel=1, batch_size=64)) as eng:
        request = GenerationRequest(model.tokenize("one two three four five six seven eight nine ten"), max_tokens=1,
                                    prompt_logprobs=True, logprobs=0)
        whole = eng.submit(request)
        whole.text()
        monkeypatch.setattr(engine_module, "PROMPT_LOGITS_BYTES", 3 * 4 * model.n_vocab)
        calls = eng.stats().decode_calls
        cut = eng.submit(request)
        cut.text()
        assert eng.stats().decode_calls - calls >= len(request.prompt) // 3
    assert [lp.token for lp in cut.prompt_logprobs[1:]] == request.prompt[1:]
    assert [lp.logprob for lp in cut.prompt_logprobs[1:]] == pytest.approx([lp.logprob for lp in whole.prompt_logprobs[1:]], abs=1e-4)
