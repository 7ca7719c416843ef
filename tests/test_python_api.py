"""The in-process Python API (``llama_host.Llama``), on real generated models: the same guest and
engine as the server, dict shapes of the HTTP API, streams as iterators, typed errors."""

from __future__ import annotations

import gc
import json
import logging
import math
import subprocess
import sys
import threading
import time

import pytest

from llama_host import APIError, Llama
from llama_host.bridge.runner import RunnerConfig
from llama_host.engine.engine import EngineConfig
from llama_host.engine.model import Target
from llama_host.errors import ErrorKind, HostError
from llama_host.preload import Preload
from llama_host.registry import ModelRegistry
from llama_host.serving import Serving, ModelRoute
from llama_host.vendor import templates_dir

PROMPT = "Q: Name the planets in the solar system? A: "
N_CTX = 256


@pytest.fixture(scope="module", autouse=True)
def _restore_log_levels():
    """verbose=False sets process-wide logger levels: give the other test modules theirs back."""
    loggers = [logging.getLogger(n) for n in ("llama_host", "llama_host.llama_cpp", "llama_host.guest")]
    saved = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, saved):
        lg.setLevel(level)


@pytest.fixture(scope="module")
def spm_path(model_path):
    return model_path("spm")


@pytest.fixture(scope="module")
def llm(spm_path):
    with Llama(str(spm_path), n_ctx=N_CTX, n_parallel=2, n_batch=128, chat_format="llama-2-chat",
               model_name="spm", verbose=False) as llm:
        yield llm


def wait_idle(llm: Llama, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while llm.stats().busy_sequences != 0:
        assert time.monotonic() < deadline, f"a sequence stayed busy: {llm.stats()}"
        time.sleep(0.01)


# --- the issue's examples ---------------------------------------------------------------------


def test_issue_examples_work_as_written(model_path):
    llm = Llama(model_path=str(model_path("spm")), n_gpu_layers=-1, n_ctx=N_CTX, chat_format="llama-2", verbose=False)
    try:
        output = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\n"], echo=True)
        assert output["object"] == "text_completion"
        assert output["choices"][0]["text"].startswith("Q: Name the planets in the solar system? A: ")
        history = [{"role": "system", "content": "You are an assistant."},
                   {"role": "user", "content": "Describe this image in detail please."}]
        message = llm.create_chat_completion(history, max_tokens=8)["choices"][0]["message"]
        assert message["role"] == "assistant" and isinstance(message["content"], str)
        assert llm.chat_format == "llama-2-chat"  # llama-cpp-python's name, mapped
    finally:
        llm.close()


# --- completions ------------------------------------------------------------------------------


def test_completion_matches_serving_for_the_same_body(llm, spm_path):
    """The body the API builds and the answer it returns are what a Serving (the server's path)
    gives for the same request, token for token (greedy)."""
    ours = llm(PROMPT, max_tokens=24, temperature=0)
    body = {"model": "spm", "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "top_p": 0.95, "min_p": 0.05,
            "top_k": 40, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repeat_penalty": 1.0}
    config = EngineConfig(ctx_size=N_CTX, parallel=1, batch_size=128)
    with ModelRegistry.load([Preload("default", "GGML", Target.CPU, spm_path)], config) as registry, \
            Serving(registry, [ModelRoute.create("spm", "default", "llama-2-chat")],
                    runner_config=RunnerConfig(templates_dir=templates_dir())) as serving:
        reply = serving.call("complete", json.dumps(body).encode())
    assert reply.status == 200, reply.body
    theirs = json.loads(reply.body)
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]
    assert ours["usage"] == theirs["usage"]
    assert ours["model"] == "spm" and ours["object"] == "text_completion"
    assert set(ours) == set(theirs)


def test_usage_counts_with_extra_fields(llm):
    """Unknown keyword arguments are merged into the body: ``ignore_eos`` makes the count exact."""
    out = llm(PROMPT, max_tokens=12, temperature=0, ignore_eos=True)
    assert out["usage"]["completion_tokens"] == 12
    assert out["usage"]["prompt_tokens"] == len(llm.tokenize(PROMPT.encode()))
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 12
    assert out["choices"][0]["finish_reason"] == "length"


def test_stream_concatenates_to_the_non_streamed_text(llm):
    whole = llm(PROMPT, max_tokens=20, temperature=0, ignore_eos=True)
    chunks = list(llm(PROMPT, max_tokens=20, temperature=0, ignore_eos=True, stream=True,
                      stream_options={"include_usage": True}))
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == whole["choices"][0]["text"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 20


def test_seeded_sampling_is_reproducible(llm):
    def sample(seed):
        return llm(PROMPT, max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed,
                   ignore_eos=True)["choices"][0]["text"]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_grammar_constrains_the_output(llm):
    out = llm(PROMPT, max_tokens=8, grammar='root ::= "yes" | "no"')
    assert out["choices"][0]["text"] in ("yes", "no")


# --- chat -------------------------------------------------------------------------------------


def test_chat_completion_shape_and_stream(llm):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = llm.create_chat_completion(messages, max_tokens=10, temperature=0, ignore_eos=True)
    assert reply["object"] == "chat.completion" and reply["model"] == "spm"
    choice = reply["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] == 10

    chunks = list(llm.create_chat_completion(messages, max_tokens=10, temperature=0, ignore_eos=True, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == choice["message"]["content"]
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"


def test_chat_response_format_and_tools_pass_through(llm):
    schema = {"type": "string", "enum": ["red", "green"]}
    reply = llm.create_chat_completion(
        [{"role": "user", "content": "Pick a colour."}], max_tokens=16,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert json.loads(reply["choices"][0]["message"]["content"]) in ("red", "green")


# --- embeddings -------------------------------------------------------------------------------


def test_embeddings(llm):
    vector = llm.embed("hello world")
    assert len(vector) == llm.n_embd()
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)
    vectors, count = llm.embed(["hello world", "second text"], return_count=True)
    assert len(vectors) == 2 and vectors[0] == pytest.approx(vector, abs=1e-5)
    assert count > 0
    reply = llm.create_embedding("hello world")
    assert reply["object"] == "list" and reply["data"][0]["object"] == "embedding"
    assert reply["model"] == "spm" and reply["usage"]["prompt_tokens"] > 0


# --- errors -----------------------------------------------------------------------------------


def test_guest_errors_are_typed(llm):
    with pytest.raises(APIError) as e:
        llm(PROMPT, temperature=5)
    assert e.value.kind is ErrorKind.INVALID_REQUEST and e.value.param == "temperature"
    assert e.value.status == 400 and "temperature" in e.value.message
    assert isinstance(e.value, HostError)
    assert e.value.body()["error"]["param"] == "temperature"

    with pytest.raises(APIError) as e:
        llm("word " * (N_CTX * 2), max_tokens=4)
    assert e.value.kind is ErrorKind.CONTEXT_LENGTH and e.value.param == "prompt"
    assert e.value.code == "context_length_exceeded"

    with pytest.raises(APIError) as e:  # a refused stream raises at the call, not at the first next()
        llm.create_chat_completion([{"role": "user", "content": "hi"}], stream=True, top_p=3)
    assert e.value.param == "top_p"

    with pytest.raises(APIError) as e:
        llm(PROMPT, model="gpt-4")
    assert e.value.kind is ErrorKind.MODEL_NOT_FOUND and e.value.status == 404

    with pytest.raises(APIError) as e:
        llm(PROMPT, grammar="root ::= undefined-rule")
    assert e.value.kind is ErrorKind.INVALID_GRAMMAR

    with pytest.raises(ValueError, match="mirostat_mode"):
        llm(PROMPT, mirostat_mode=2)
    wait_idle(llm)


# --- streams: cancellation, threads -----------------------------------------------------------


def test_closing_a_stream_early_frees_the_sequence(llm, caplog):
    caplog.set_level(logging.WARNING, logger="llama_host")
    stream = llm(PROMPT, max_tokens=200, ignore_eos=True, stream=True)
    next(stream), next(stream)
    assert llm.stats().busy_sequences == 1
    generated = llm.stats().generated_tokens
    stream.close()
    assert not stream.running
    wait_idle(llm)
    assert llm.stats().generated_tokens - generated < 20  # cancelled, not run to 200 tokens
    with pytest.raises(StopIteration):
        next(stream)

    # dropped without close (a `for` loop left with break): the guest stops at its next token
    for i, _ in enumerate(llm(PROMPT, max_tokens=200, ignore_eos=True, stream=True)):
        if i == 2:
            break
    gc.collect()
    wait_idle(llm)
    assert llm(PROMPT, max_tokens=4)["choices"][0]["finish_reason"] in ("length", "stop")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_two_threads_at_once(llm):
    prompts = [PROMPT, "Once upon a time"]
    expected = [llm(p, max_tokens=16, temperature=0, ignore_eos=True)["choices"][0]["text"] for p in prompts]
    results: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        results[i] = llm(prompts[i], max_tokens=16, temperature=0, ignore_eos=True)["choices"][0]["text"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [results.get(0), results.get(1)] == expected


# --- model, lifetime, construction ------------------------------------------------------------


def test_detokenizing_ids_outside_the_vocabulary_is_a_value_error(spm_path):
    # llama.cpp indexes its vocabulary with .at(): the C++ exception aborted the process (a child
    # process here, so that the old behaviour fails the test instead of ending the run)
    code = ("import sys; from llama_host import Llama\n"
            f"llm = Llama({str(spm_path)!r}, n_ctx=256, verbose=False)\n"
            "for bad in ([-1], [10**9], [2**31], ['abc']):\n"
            "    try: llm.detokenize(bad)\n"
            "    except ValueError as e: print('ValueError', e)\n"
            "print(llm.detokenize([]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ValueError") == 4 and "not in the model's vocabulary (0 to 31999)" in r.stdout


def test_tokens_and_context(llm):
    tokens = llm.tokenize(b"Hello world")
    assert tokens[0] == 1  # Llama-2's BOS
    assert llm.detokenize(tokens[1:]).strip() == b"Hello world"
    assert llm.tokenize("Hello world", add_bos=False) == tokens[1:]
    assert llm.n_ctx() >= N_CTX
    assert llm.n_vocab() == 32000


def test_close_and_template_file(model_path, tmp_path):
    template = tmp_path / "mine.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]")
    llm = Llama(model_path("tiny"), template=str(template), n_ctx=128, verbose=False)
    with llm:
        assert llm.model_name == model_path("tiny").stem
        out = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4, ignore_eos=True)
        assert out["model"] == llm.model_name and out["usage"]["completion_tokens"] == 4
        assert out["usage"]["prompt_tokens"] == len(llm.tokenize("[user] hi\n[assistant]"))
        stream = llm("a b c", max_tokens=100, ignore_eos=True, stream=True)
        next(stream)
    assert not stream.running  # close() stopped the open stream first
    llm.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        llm("hi")
    with pytest.raises(RuntimeError, match="closed"):
        llm.n_ctx()


def test_close_during_a_call_fails_that_call_instead_of_cutting_its_answer(model_path):
    # (the cut answer came back as a normal one: finish_reason "stop", 57 of 1500 tokens)
    llm = Llama(model_path("tiny"), n_ctx=2048, verbose=False)
    outcome: list = []

    def call():
        try:
            outcome.append(llm.create_completion("hello", max_tokens=1500, ignore_eos=True))
        except APIError as e:
            outcome.append(e)

    worker = threading.Thread(target=call)
    worker.start()
    while not llm.stats().busy_sequences and worker.is_alive():
        time.sleep(0.01)
    llm.close()
    worker.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], APIError), outcome
    assert outcome[0].status == 503, outcome[0]


def test_constructor_errors(model_path, tmp_path):
    tiny = str(model_path("tiny"))
    with pytest.raises(FileNotFoundError, match="not found"):
        Llama(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        Llama(tmp_path / "junk.gguf")
    with pytest.raises(ValueError, match="unknown prompt template 'no-such-template'"):
        Llama(tiny, chat_format="no-such-template")
    with pytest.raises(ValueError, match="disagree"):
        Llama(tiny, chat_format="chatml", template="llama-2-chat")
    for bad in ({"n_ctx": 0}, {"n_parallel": 0}, {"n_batch": -1}, {"n_threads": 0}, {"n_gpu_layers": -2},
                {"n_ctx": "big"}, {"model_name": ""}):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            Llama(tiny, **bad)
    # (values of the right type that no machine can serve: the engine's refusal, as a ValueError)
    for bad in ({"n_ctx": 10**12}, {"n_parallel": 10**6}):
        with pytest.raises(ValueError, match="at most|more memory|cells"):
            Llama(tiny, **bad)


def test_verbose_false_quiets_the_loggers(model_path):
    names = ("llama_host", "llama_host.llama_cpp", "llama_host.guest")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.DEBUG)
        with Llama(model_path("tiny"), n_ctx=64, verbose=False):
            assert all(logging.getLogger(n).level == logging.WARNING for n in names)
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def test_import_is_lazy():
    code = ("import sys, llama_host; assert 'llama_cpp' not in sys.modules and 'wasmtime' not in sys.modules; "
            "from llama_host import Llama, APIError; assert Llama.__module__ == 'llama_host.api'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
