"""Loading, metadata, offload targets, resource lifetime, and bad GGUF files."""

from __future__ import annotations

import logging
import threading
import subprocess
import sys

import pytest

from llama_host.engine import amx, lib, model as model_mod
from llama_host.engine.context import Context
from llama_host.engine.generate import FinishReason, Generation, generate
from llama_host.errors import PromptTooLong
from llama_host.engine.model import LoadCancelled, Model, ModelLoadError, Target
from llama_host.modelgen import PRESETS


def test_metadata_of_a_real_vocab_model(spm_model):
    info = spm_model.info
    preset = PRESETS["spm"]
    assert info.name == "llama-host-spm"
    assert info.architecture == "llama"
    assert info.n_ctx_train == preset.n_ctx
    assert info.n_embd == preset.n_embd
    assert info.n_vocab == 32000
    assert (info.bos_id, info.eos_id) == (1, 2)
    assert (info.bos_token, info.eos_token) == ("<s>", "</s>")
    assert info.add_bos is True
    assert info.chat_template and "[INST]" in info.chat_template
    assert info.n_gpu_layers == 0


def test_metadata_of_llama3_vocab(bpe_model):
    info = bpe_model.info
    assert info.n_vocab == 128256
    assert info.bos_token == "<|begin_of_text|>"
    assert info.chat_template.startswith("{{- bos_token }}")
    eot = bpe_model.tokenize("<|eot_id|>", add_bos=False)
    assert len(eot) == 1 and bpe_model.is_eog(eot[0])
    assert not bpe_model.is_eog(bpe_model.tokenize("Hi", add_bos=False)[0])


def test_meta_lookup(tiny_model):
    assert tiny_model.meta("llama.block_count") == str(PRESETS["tiny"].n_layer)
    assert tiny_model.meta("no.such.key") is None


def test_targets_choose_offload(model_path, caplog):
    assert model_mod.offload_layers(Target.CPU) == 0
    gpu = lib.supports_gpu_offload()
    with caplog.at_level(logging.WARNING, logger="llama_host.engine.model"):
        layers = model_mod.offload_layers(Target.GPU)
    if gpu:
        assert layers == -1
    else:
        assert layers == 0
        assert "no GPU backend" in caplog.text
    with Model(model_path("tiny"), target=Target.AUTO) as m:
        assert m.info.n_gpu_layers == (-1 if gpu else 0)


def test_close_is_idempotent_and_final(model_path):
    m = Model(model_path("tiny"))
    m.close()
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.ptr


def test_a_cancelled_load_stops_and_says_so(model_path):
    cancel = threading.Event()
    Model(model_path("tiny"), cancel=cancel).close()  # not set: loads as usual
    cancel.set()
    with pytest.raises(LoadCancelled, match="cancelled"):
        Model(model_path("tiny"), cancel=cancel)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Model(tmp_path / "nope.gguf")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:4],  # magic only
        lambda b: b[: len(b) // 2],  # truncated tensor data
        lambda b: b[:4] + b"\xff\xff\xff\x7f" + b[8:],  # absurd version
        lambda b: b"GGUF" + b"\0" * 100,  # zeros
    ],
)
def test_corrupt_gguf_is_a_clean_error(model_path, tmp_path, damage):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(model_path("tiny").read_bytes()))
    with pytest.raises(ModelLoadError, match="cannot load"):
        Model(bad)


def test_amx_probe_gives_a_verdict():
    amx.amx_state.cache_clear()
    assert amx.amx_state() in set(amx.AmxState)


def test_extra_buffer_types_off_only_when_amx_is_built_in_and_its_code_faults(monkeypatch):
    states = {"faulting": amx.LibraryState.FAULTING, "works": amx.LibraryState.WORKS}
    for built, state, expected in [
        ("1", "faulting", False),
        ("1", "works", True),
        ("0", "faulting", True),
        (None, "faulting", True),
    ]:
        features = {} if built is None else {"AMX_INT8": built}
        monkeypatch.setattr(lib, "system_features", lambda f=features: f)
        monkeypatch.setattr(model_mod, "library_state", lambda s=states[state]: s)
        model_mod._extra_buffer_types_safe.cache_clear()
        assert model_mod._extra_buffer_types_safe() is expected
    model_mod._extra_buffer_types_safe.cache_clear()


def test_library_probe_runs_the_installed_library_in_a_child():
    """The verdict comes from decoding with the built library, not from what the CPU says."""
    amx.library_state.cache_clear()
    assert amx.library_state() is amx.LibraryState.WORKS  # the suite itself runs on this library
    child = subprocess.run([sys.executable, amx.__file__, "--library"], capture_output=True, text=True)
    assert (child.returncode, child.stdout.strip()) == (0, "works")


@pytest.mark.parametrize("code,state", [
    ("pass", amx.LibraryState.WORKS),
    ("import os, signal; os.kill(os.getpid(), signal.SIGILL)", amx.LibraryState.FAULTING),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", amx.LibraryState.FAULTING),
    ("import os; os.abort()", amx.LibraryState.FAULTING),
])
def test_a_probe_child_killed_by_a_fault_is_faulting(code, state):
    assert amx.verdict(subprocess.run([sys.executable, "-c", code]).returncode) is state


def test_a_probe_child_that_fails_otherwise_is_an_error():
    with pytest.raises(RuntimeError, match="exit status 3"):
        amx.verdict(subprocess.run([sys.executable, "-c", "raise SystemExit(3)"]).returncode)


def test_q4_0_model_decodes(model_path):
    """Regression: on CPUs that advertise AMX but fault on it, a Q4_0 decode died with SIGILL."""
    with Model(model_path("spm", "q4_0")) as m, Context(m, n_ctx=256, n_batch=32) as ctx:
        prompt = m.tokenize("The quick brown fox jumps over the lazy dog. " * 3)
        gen = Generation(ctx, prompt, max_tokens=16)
        tokens = list(gen)
    assert gen.finish_reason is FinishReason.LENGTH and len(tokens) == 16


def test_generation_reports_why_it_ended(tiny_ctx, tiny_model):
    prompt = tiny_model.tokenize("hello world")
    gen = Generation(tiny_ctx, prompt, max_tokens=5)
    tokens = list(gen)
    assert gen.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    if gen.finish_reason is FinishReason.LENGTH:
        assert len(tokens) == 5


def test_context_full_ends_with_length(tiny_model):
    with Context(tiny_model, n_ctx=256, n_batch=64) as ctx:
        assert ctx.n_ctx == 256
        prompt = tiny_model.tokenize(" ".join(["hello world"] * 125))  # BOS + 250 tokens
        assert len(prompt) == 251
        gen = Generation(ctx, prompt, max_tokens=1000)
        tokens = list(gen)
        # Positions 251..255 take five generated tokens; the sixth is sampled from the last one.
        assert gen.finish_reason is FinishReason.LENGTH
        assert len(tokens) == ctx.n_ctx - len(prompt) + 1


def test_prompt_too_long(tiny_model):
    with Context(tiny_model, n_ctx=256, n_batch=64) as ctx:
        prompt = tiny_model.tokenize(" ".join(["hello world"] * 128))
        with pytest.raises(PromptTooLong) as err:
            Generation(ctx, prompt)
        assert (err.value.n_prompt, err.value.n_ctx) == (257, 256)
        assert "257 tokens" in str(err.value) and "256 tokens of context" in str(err.value)


@pytest.mark.parametrize("advertised,state,expected", [
    (True, "FAULTING", "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"),
    (True, "USABLE", ""),
    (False, "FAULTING", ""),
])
def test_build_flags_compile_amx_out_only_where_it_faults(tmp_path, monkeypatch, advertised, state, expected):
    cc = tmp_path / "cc"  # a compiler whose -march=native does or does not define __AMX_INT8__
    cc.write_text("#!/bin/sh\n" + ("echo '#define __AMX_INT8__ 1'\n" if advertised else "echo '#define __SSE2__ 1'\n"))
    cc.chmod(0o755)
    monkeypatch.setattr(amx, "amx_state", lambda: amx.AmxState[state])
    assert amx.build_cflags(str(cc)) == expected
