"""Our engine against an independent driver of the same llama.cpp: llama-cpp-python's high-level
``Llama`` class. Same model, same settings: the same tokens, greedy and seeded."""

from __future__ import annotations

import llama_cpp
import pytest
from llama_cpp import Llama

from llama_host.engine.context import Context
from llama_host.engine.generate import generate
from llama_host.engine.model import Model
from llama_host.engine.sampling import SamplingParams

PROMPTS = [
    "Hello",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Ünïcödé text, 日本語 and emoji 🦙 in one prompt.",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
]
N_CTX, N_BATCH, MAX_TOKENS = 512, 64, 24
# Both sides use the same attention kernel: with random weights (near-ties in logits), flash and
# plain attention round differently enough to change a greedy choice after a few tokens.
FLASH = True


def oracle_tokens(llm: Llama, prompt_tokens: list[int], **sampling) -> list[int]:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.reset()
    out = []
    for tok in llm.generate(prompt_tokens, reset=True, **sampling):
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        out.append(tok)
        if len(out) == MAX_TOKENS:
            break
    return out


@pytest.fixture(scope="module", params=[("spm", None), ("bpe", None), ("spm", "q4_0"), ("tiny", None)],
                ids=lambda p: "-".join(x for x in p if x))
def pair(request, model_path):
    path = model_path(*request.param)
    llm = Llama(str(path), n_ctx=N_CTX, n_batch=N_BATCH, n_threads=2, flash_attn=FLASH, verbose=False, seed=0)
    with Model(path) as model, Context(model, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=2, flash_attn=FLASH) as ctx:
        yield model, ctx, llm
    llm.close()


def test_greedy_tokens_equal_llama_cpp_python(pair):
    model, ctx, llm = pair
    for prompt in PROMPTS:
        tokens = model.tokenize(prompt)
        assert tokens == llm.tokenize(prompt.encode(), add_bos=True, special=True)
        ours = generate(ctx, tokens, max_tokens=MAX_TOKENS)
        theirs = oracle_tokens(llm, tokens, temp=0.0, top_k=1, repeat_penalty=1.0)
        assert ours == theirs, prompt
        assert len(ours) > 0


def test_long_prompt_across_batches(pair):
    model, ctx, llm = pair
    tokens = model.tokenize("Once upon a time, " * 40)
    assert len(tokens) > 2 * N_BATCH
    assert generate(ctx, tokens, max_tokens=MAX_TOKENS) == oracle_tokens(llm, tokens, temp=0.0, repeat_penalty=1.0)


def test_seeded_sampling_equals_llama_cpp_python(model_path):
    path = model_path("spm")
    params = SamplingParams(temperature=1.5, top_k=50, top_p=0.9, min_p=0.0, seed=1234)
    with Model(path) as model, Context(model, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=2, flash_attn=FLASH) as ctx:
        tokens = model.tokenize("Once upon a time")
        ours = generate(ctx, tokens, params, max_tokens=MAX_TOKENS)
        again = generate(ctx, tokens, params, max_tokens=MAX_TOKENS)
        other = generate(ctx, tokens, SamplingParams(temperature=1.5, top_k=50, top_p=0.9, min_p=0.0, seed=99),
                         max_tokens=MAX_TOKENS)
    llm = Llama(str(path), n_ctx=N_CTX, n_batch=N_BATCH, n_threads=2, flash_attn=FLASH, verbose=False, seed=1234)
    try:
        theirs = oracle_tokens(llm, tokens, temp=1.5, top_k=50, top_p=0.9, min_p=0.0, repeat_penalty=1.0)
    finally:
        llm.close()
    assert ours == again
    assert ours == theirs
    assert ours != other
