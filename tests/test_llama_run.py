"""``llama-run``: a wasi-nn command module from the tests' own sources, run as a user would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

from llama_host.engine import Engine, EngineConfig, GenerationRequest, Model

GUEST = Path(__file__).parent / "guests" / "greedy.wat"


@pytest.fixture(scope="module")
def greedy_wasm(tmp_path_factory):
    path = tmp_path_factory.mktemp("guest") / "greedy.wasm"
    path.write_bytes(wasmtime.wat2wasm(GUEST.read_text()))
    return path


def llama_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_host.llama_run", *args], capture_output=True, timeout=120)


def test_prints_the_engines_greedy_text(greedy_wasm, model_path):
    model_file = model_path("spm")
    prompt = "Once upon a time, a llama"
    proc = llama_run("--nn-preload", f"default:GGML:AUTO:{model_file}", str(greedy_wasm), prompt)
    assert proc.returncode == 0, proc.stderr.decode()
    with Model(model_file) as model, Engine(model, EngineConfig(ctx_size=4096, parallel=1)) as engine:
        text, result = engine.generate(GenerationRequest(model.tokenize(prompt), max_tokens=16))
    assert result.completion_tokens == 16
    assert proc.stdout.decode() == text


def test_guest_exit_code_is_returned(greedy_wasm, model_path):
    # The guest exits with the errno of the call that failed: 103, ModelNotFound.
    proc = llama_run("--nn-preload", f"other:GGML:CPU:{model_path('tiny')}", str(greedy_wasm), "hi")
    assert proc.returncode == 103
    proc = llama_run("--nn-preload", f"default:GGML:CPU:{model_path('tiny')}", str(greedy_wasm))  # no prompt
    assert proc.returncode == 64


def test_ctrl_c_stops_the_generation_at_once(tmp_path, model_path):
    # (the main thread waited in the host call for the whole generation: Ctrl-C took effect at its end)
    long = tmp_path / "long.wasm"
    metadata = '{"temp": 0.0, "n-predict": 7000, "ignore-eos": true}'
    long.write_bytes(wasmtime.wat2wasm(GUEST.read_text()
                                       .replace('{\\"temp\\": 0.0, \\"n-predict\\": 16}', metadata.replace('"', '\\"'))
                                       .replace("(i32.const 256) (i32.const 30)", f"(i32.const 256) (i32.const {len(metadata)})")))
    proc = subprocess.Popen([sys.executable, "-m", "llama_host.llama_run", "--nn-preload",
                             f"default:GGML:CPU:{model_path('tiny')}", "--threads", "1", "--ctx-size", "8192",
                             str(long), "Once upon"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)
    assert proc.poll() is None, proc.stderr.read().decode()  # (still generating)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"llama-run: interrupted" in err, err.decode()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nn-preload", "default:ONNX:CPU:x.gguf", "app.wasm"], "unknown encoding 'ONNX'"),
        (["--nn-preload", "default:GGML:CPU:/nonexistent.gguf", "app.wasm"], "model file not found"),
        (["/nonexistent.wasm"], "No such file"),
        (["--env", "NOEQUALS", "app.wasm"], "expected K=V"),
        (["--ctx-size", "0", "app.wasm"], "--ctx-size must be positive"),
    ],
)
def test_bad_command_lines(args, message):
    proc = llama_run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr.decode()


def test_not_a_wasm_module(tmp_path):
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm garbage")
    proc = llama_run(str(bad))
    assert proc.returncode == 2 and "not a valid WebAssembly module" in proc.stderr.decode()


def test_dir_preopens_a_host_folder(tmp_path):
    """LlamaEdge's examples all run with --dir .:. ; the guest reads a file through it."""
    (tmp_path / "prompt.txt").write_text("a file from the host folder\n")
    wasm = tmp_path / "cat.wasm"
    wasm.write_bytes(wasmtime.wat2wasm((GUEST.parent / "cat.wat").read_text()))
    proc = llama_run("--dir", f"{tmp_path}:.", str(wasm))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "a file from the host folder\n"
    assert llama_run(str(wasm)).returncode == 1  # without --dir there is nothing to open
