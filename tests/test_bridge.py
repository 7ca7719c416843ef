"""The WASI-NN bridge: real guests (WAT) under wasmtime, real models in llama.cpp."""

from __future__ import annotations

import json
import struct
import threading

import pytest
import wasmtime

from llama_host.bridge.abi import Errno
from llama_host.bridge.runner import GuestLoadError, GuestRunner, RunnerConfig
from llama_host.engine import EngineConfig, GenerationRequest
from llama_host.preload import parse_preloads
from llama_host.registry import ModelRegistry
from wasm_program import Program, load

E = Errno


@pytest.fixture(scope="module")
def registry(model_path):
    preloads = parse_preloads([f"default:GGML:CPU:{model_path('tiny')}", f"spm:GGML:AUTO:{model_path('spm')}"])
    with ModelRegistry.load(preloads, EngineConfig(ctx_size=512, parallel=4, batch_size=64)) as reg:
        yield reg


@pytest.fixture(scope="module")
def runner(registry, tmp_path_factory):
    templates = tmp_path_factory.mktemp("templates")
    (templates / "chatml.jinja").write_text("{{ messages }}")
    config = RunnerConfig(memory_limit=8 << 20, deadline=0.5, templates_dir=templates,
                          cache_dir=tmp_path_factory.mktemp("wasm-cache"))
    with GuestRunner(registry, config) as r:
        yield r


def run(runner, program: Program, **kwargs):
    result = runner.run(runner.load(program.build()), **kwargs)
    assert result.trap is None, result.trap
    return program.parse(result.emitted)


def session(p: Program, name: bytes = b"default", prompt: bytes = b"hello world", metadata: dict | None = None):
    """load_by_name + init_execution_context + set_input(s): returns the ctx-id expression."""
    graph, ctx = p.slot(), p.slot()
    p.call("load_by_name", p.data(name), len(name), graph)
    p.call("init_execution_context", load(graph), ctx)
    p.call("set_input", load(ctx), 0, p.tensor(prompt))
    p.call("set_input", load(ctx), 1, p.tensor(json.dumps(metadata or {"n-predict": 8, "temp": 0.0}).encode()))
    return load(ctx), load(graph)


def output(p: Program, ctx: str, index: int = 0, size: int = 4096, single: bool = False) -> int:
    buf, written = p.alloc(size), p.slot()
    i = p.call("get_output_single" if single else "get_output", ctx, index, buf, size, written)
    p.report(buf, load(written))
    return i


def engine_text(registry, name: str, prompt: bytes, n: int) -> str:
    served = registry.get(name)
    text, _ = served.engine.generate(GenerationRequest(served.model.tokenize(prompt), max_tokens=n))
    return text


# --- happy paths --------------------------------------------------------------------------------


def test_compute_equals_the_engine(runner, registry):
    p = Program()
    ctx, _ = session(p, b"spm", b"Once upon a time", {"n-predict": 12, "temp": 0.0})
    p.call("compute", ctx)
    output(p, ctx, 0)
    output(p, ctx, 1)
    errnos, _, (text, meta) = run(runner, p)
    assert errnos == [0] * 7
    assert text.decode() == engine_text(registry, "spm", b"Once upon a time", 12)
    meta = json.loads(meta)
    assert meta["input_tokens"] == len(registry.get("spm").model.tokenize(b"Once upon a time"))
    assert meta["output_tokens"] == 12 and meta["finish_reason"] == "length"
    assert {"llama_build_number", "llama_commit"} <= meta.keys()


def test_streaming_equals_compute(runner, registry):
    p = Program()
    ctx, _ = session(p, b"spm", b"Once upon a time", {"n-predict": 12, "temp": 0.0})
    p.stream(ctx, p.alloc(256), 256)
    output(p, ctx, 1)  # metadata after the stream
    p.call("fini_single", ctx)
    p.call("finalize_execution_context", ctx)
    errnos, pieces, (meta,) = run(runner, p)
    assert errnos == [0, 0, 0, 0, E.END_OF_SEQUENCE, 0, 0, 0]
    assert b"".join(pieces).decode() == engine_text(registry, "spm", b"Once upon a time", 12)
    assert json.loads(meta)["output_tokens"] == 12


def test_token_ids_and_the_slot_come_out_with_the_text(runner, registry):
    """Output 4: the generated ids (``return-tokens`` for compute; per token for compute_single),
    the same tokens the engine generates; ``id-slot`` pins the sequence the metadata then names."""
    served = registry.get("spm")
    handle = served.engine.submit(GenerationRequest(served.model.tokenize(b"Once upon a time"), max_tokens=6))
    want = [out.token for out in handle if out.token >= 0]
    p = Program()
    ctx, _ = session(p, b"spm", b"Once upon a time", {"n-predict": 6, "temp": 0.0, "return-tokens": True, "id-slot": 3})
    p.call("compute", ctx)
    output(p, ctx, 4)
    output(p, ctx, 1)
    errnos, _, (tokens, meta) = run(runner, p)
    assert errnos == [0] * 7
    ids = json.loads(tokens)
    assert ids == want and len(ids) == 6
    assert json.loads(meta)["id_slot"] == 3
    p = Program()
    ctx, _ = session(p, b"spm", b"Once upon a time", {"n-predict": 6, "temp": 0.0})
    for _ in range(8):  # (6 tokens, maybe text released at the end, then the end)
        p.call("compute_single", ctx)
        output(p, ctx, 4, single=True)
        output(p, ctx, 0, single=True)
    errnos, _, reports = run(runner, p)
    end = errnos[-24::3].index(E.END_OF_SEQUENCE)  # (the compute_single calls' answers)
    pairs = [(json.loads(reports[i]), reports[i + 1]) for i in range(0, 2 * end, 2)]
    assert sum((ids_ for ids_, _ in pairs), []) == ids  # (each with the output that releases its text)
    assert all(bool(ids_) == bool(text) for ids_, text in pairs)


def test_load_by_name_with_config_sets_defaults(runner, registry):
    p = Program()
    graph, ctx = p.slot(), p.slot()
    config = json.dumps({"n-predict": 5, "temp": 0.0}).encode()
    p.call("load_by_name_with_config", p.data(b"spm"), 3, p.data(config), len(config), graph)
    p.call("init_execution_context", load(graph), ctx)
    p.call("set_input", load(ctx), 0, p.tensor(b"Hello"))
    p.call("compute", load(ctx))
    output(p, load(ctx), 1)
    errnos, _, (meta,) = run(runner, p)
    assert errnos == [0] * 5
    assert json.loads(meta)["output_tokens"] == 5


def test_load_from_bytes_and_preload_path(runner, model_path):
    model = model_path("tiny").read_bytes()
    p = Program(pages=max(4, len(model) // 65536 + 4))
    weights = p.data(model)
    builders = p.data(struct.pack("<2I", weights, len(model)))
    graph = p.slot()
    p.call("load", builders, 1, 6, 0, graph)
    ctx = p.slot()
    p.call("init_execution_context", load(graph), ctx)
    p.call("set_input", load(ctx), 0, p.tensor(b"hello"))
    p.call("set_input", load(ctx), 1, p.tensor(b'{"n-predict": 3}'))
    p.call("compute", load(ctx))
    p.call("unload", load(graph))
    p.call("compute", load(ctx))  # its graph is gone
    path = b"preload:" + str(model_path("tiny")).encode()
    other = p.slot()
    p.call("load", p.data(struct.pack("<2I", p.data(path), len(path))), 1, 6, 0, other)
    p.call("load", p.data(struct.pack("<2I", weights, len(model))), 1, 4, 0, other)  # ONNX
    p.call("load", p.data(struct.pack("<2I", p.data(b"not gguf"), 8)), 1, 6, 0, other)
    p.call("load", builders, 0, 6, 0, other)
    errnos, _, _ = run(runner, p, allow_host_paths=False)
    assert errnos == [0, 0, 0, 0, 0, 0, E.INVALID_ARGUMENT, E.UNSUPPORTED_OPERATION, E.INVALID_ENCODING,
                      E.INVALID_ARGUMENT, E.INVALID_ARGUMENT]


def test_model_info_and_request(runner, registry):
    p = Program()
    graph = p.slot()
    p.call("load_by_name", p.data(b"spm"), 3, graph)
    buf, written = p.alloc(8192), p.slot()
    p.call("model_info", load(graph), buf, 8192, written)
    p.report(buf, load(written))
    req, req_written = p.alloc(64), p.slot()
    p.call("request_read", req, 64, req_written)
    p.report(req, load(req_written))
    p.raw(f"(i32.store (i32.const {p.slot()}) (call $llama_host_v1.abi_version))")
    errnos, _, (info, request) = run(runner, p, request=b'{"hello": 1}')
    info = json.loads(info)
    assert errnos == [0, 0, 0]
    assert info["name"] == "spm" and info["bos_token"] == "<s>" and "[INST]" in info["chat_template"]
    assert info["n_ctx"] == registry.get("spm").engine.n_ctx_seq
    assert request == b'{"hello": 1}'


# --- failure paths ------------------------------------------------------------------------------


def test_unknown_names_and_ids(runner):
    p = Program()
    out = p.slot()
    p.call("load_by_name", p.data(b"nope"), 4, out)
    p.call("load_by_name", p.data(b"\xff\xfe"), 2, out)
    p.call("init_execution_context", 999, out)
    p.call("set_input", 999, 0, p.tensor(b"x"))
    p.call("compute", 999)
    p.call("compute_single", 999)
    p.call("get_output", 999, 0, p.alloc(16), 16, out)
    p.call("unload", 999)
    p.call("finalize_execution_context", 999)
    p.call("fini_single", 999)
    errnos, _, _ = run(runner, p)
    assert errnos == [E.MODEL_NOT_FOUND] + [E.INVALID_ARGUMENT] * 9


def test_out_of_bounds_pointers_and_overflow(runner):
    p = Program(pages=1)  # 65536 bytes
    out = p.slot()
    name = p.data(b"default")
    p.call("load_by_name", 65530, 7, out)  # name past the end
    p.call("load_by_name", name, 0xFFFFFFF0, out)  # ptr + len overflows 32 bits
    p.call("load_by_name", name, 7, 65534)  # out pointer half outside
    p.call("load_by_name", name, 7, -4)  # 0xfffffffc
    ctx, _ = session(p)
    p.call("set_input", ctx, 0, 65530)  # tensor struct outside
    p.call("set_input", ctx, 0, p.tensor(b"", data_ptr=60000, data_len=10000))  # data outside
    p.call("set_input", ctx, 0, p.tensor(b"", data_ptr=8, data_len=0xFFFFFFFF))
    p.call("compute", ctx)
    p.call("get_output", ctx, 0, 65000, 4096, out)  # buffer outside
    p.call("get_output", ctx, 0, p.alloc(8), 8, 0xFFFFFFFF)  # written outside
    errnos, _, _ = run(runner, p)
    assert errnos[:4] == [E.INVALID_ARGUMENT] * 4
    assert errnos[4:8] == [0, 0, 0, 0]  # the session itself is fine
    assert errnos[8:] == [E.INVALID_ARGUMENT, E.INVALID_ARGUMENT, E.INVALID_ARGUMENT, 0, E.INVALID_ARGUMENT,
                          E.INVALID_ARGUMENT]


def test_buf_max_too_small_reports_the_size_needed(runner):
    p = Program()
    ctx, _ = session(p, metadata={"n-predict": 8, "temp": 0.0})
    p.call("compute", ctx)
    small, written = p.alloc(2), p.slot()
    p.call("get_output", ctx, 0, small, 2, written)
    p.report(written, 4)
    output(p, ctx, 0)
    errnos, _, (needed, text) = run(runner, p)
    assert errnos[-2:] == [E.TOO_LARGE, 0]
    assert struct.unpack("<I", needed)[0] == len(text) > 2


def test_compute_before_input_and_bad_indexes(runner):
    p = Program()
    graph, ctx = p.slot(), p.slot()
    p.call("load_by_name", p.data(b"default"), 7, graph)
    p.call("init_execution_context", load(graph), ctx)
    p.call("compute", load(ctx))
    p.call("compute_single", load(ctx))
    p.call("set_input", load(ctx), 2, p.tensor(b"x"))
    p.call("set_input", load(ctx), 0, p.tensor(b"x", dims=tuple(range(20))))
    p.call("get_output", load(ctx), 7, p.alloc(16), 16, p.slot())
    p.call("finalize_execution_context", load(ctx))
    p.call("finalize_execution_context", load(ctx))  # twice
    p.call("unload", load(graph))
    p.call("unload", load(graph))
    errnos, _, _ = run(runner, p)
    assert errnos == [0, 0] + [E.INVALID_ARGUMENT] * 5 + [0, E.INVALID_ARGUMENT, 0, E.INVALID_ARGUMENT]


@pytest.mark.parametrize(
    "metadata",
    [b"{not json", b"[1, 2]", b'"text"', b'{"n-predict": "ten"}', b'{"temp": true}', b'{"stop": [1]}',
     b'{"seed": 1.5}', b'{"grammar": "root ::= nope"}', b'{"json-schema": "{bad"}', b"[" * 100_000,
     b'{"grammar": "root ::= \\"a\\"", "grammar-triggers": [""]}',
     b'{"grammar": "root ::= \\"a\\"", "grammar-triggers": [7]}',
     b'{"grammar": "root ::= \\"a\\"", "grammar-triggers": ["' + b"a" * 257 + b'"]}',
     b'{"grammar": "root ::= \\"a\\"", "grammar-triggers": ' + json.dumps(["a"] * 17).encode() + b"}",
     b'{"grammar": "root ::= tool-0", "grammar-schemas": {"root": {"type": "string"}}}',
     b'{"grammar": "root ::= tool-0", "grammar-schemas": {"tool-0": {"type": "nothing"}}}',
     b'{"grammar": "root ::= tool-0", "grammar-schemas": {"tool-0": 3}}',
     b'{"id-slot": 4}', b'{"id-slot": -2}', b'{"id-slot": true}', b'{"return-tokens": 1}',
     b'{"dry-sequence-breakers": ' + json.dumps(["x"] * 33).encode() + b"}",
     b'{"dry-sequence-breakers": ["' + b"x" * 257 + b'"]}', b'{"mirostat": 1.5}', b'{"xtc-probability": "x"}'],
)
def test_malformed_metadata(runner, metadata):
    p = Program(pages=8)
    ctx, _ = session(p)
    p.call("set_input", ctx, 1, p.tensor(metadata))
    p.call("compute", ctx)
    errnos, _, _ = run(runner, p)
    # grammar errors surface at compute; the others at set_input
    assert E.INVALID_ARGUMENT in errnos[4:]


def test_unknown_metadata_keys_are_ignored(runner):
    p = Program()
    ctx, _ = session(p, metadata={"n-predict": 2, "no-such-key": [1, {"x": None}], "enable-log": True})
    p.call("compute", ctx)
    errnos, _, _ = run(runner, p)
    assert errnos == [0] * 5


def test_prompt_too_long_and_context_full(runner):
    p = Program(pages=4)
    ctx, _ = session(p, prompt=b" ".join([b"hello world"] * 300))
    p.call("compute", ctx)
    ctx2, _ = session(p, prompt=b" ".join([b"hello world"] * 250), metadata={"ignore-eos": True, "temp": 0.0})
    p.call("compute", ctx2)
    ctx3, _ = session(p, prompt=b" ".join([b"hello world"] * 250), metadata={"ignore-eos": True, "temp": 0.0})
    p.stream(ctx3, p.alloc(64), 64)
    errnos, _, _ = run(runner, p)
    assert errnos[4] == E.PROMPT_TOO_LONG
    assert errnos[9] == E.CONTEXT_FULL
    assert errnos[14] == E.CONTEXT_FULL


# --- the sandbox --------------------------------------------------------------------------------


def raw_guest(body: str, extra: str = "", pages: int = 1) -> bytes:
    return wasmtime.wat2wasm(f"""(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "llama_host_v1" "emit" (func $emit (param i32 i32) (result i32)))
      (memory (export "memory") {pages})
      {extra}
      (func (export "_start") {body}))""")


def wat_bytes(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def test_infinite_loop_is_stopped_by_the_deadline(runner):
    result = runner.run(runner.load(raw_guest("(loop (br 0))")))
    assert result.exit_code == -1 and result.trap == "deadline exceeded"


def test_trap_ends_only_that_run(runner):
    result = runner.run(runner.load(raw_guest("unreachable")))
    assert result.exit_code == -1 and "unreachable" in result.trap


def test_memory_cannot_grow_past_the_cap(runner):
    # 8 MiB cap: growing by 1 GiB fails (memory.grow returns -1), the guest goes on.
    body = """(i32.store (i32.const 0) (memory.grow (i32.const 16384)))
              (i32.store (i32.const 4) (memory.grow (i32.const 16)))
              (drop (call $emit (i32.const 0) (i32.const 8)))"""
    result = runner.run(runner.load(raw_guest(body)))
    assert result.trap is None
    assert struct.unpack("<2i", result.emitted[0]) == (-1, 1)


def test_memory_declared_past_the_cap_is_refused(runner):
    result = runner.run(runner.load(raw_guest("", pages=1024)))  # 64 MiB initial memory
    assert result.exit_code == -1 and result.trap


@pytest.mark.parametrize(
    ("fd", "path", "oflags", "rights"),
    [
        (3, b"../etc/passwd", 0, 2),  # out of the preopen
        (3, b"/etc/passwd", 0, 2),
        (3, b"chatml.jinja", 1, 64),  # create/write inside the read-only templates
        (4, b"etc/passwd", 0, 2),  # no other preopen
    ],
)
def test_files_outside_the_templates_cannot_be_opened(runner, fd, path, oflags, rights):
    body = f"""(i32.store (i32.const 0) (call $path_open (i32.const {fd}) (i32.const 0) (i32.const 64)
                 (i32.const {len(path)}) (i32.const {oflags}) (i64.const {rights}) (i64.const 0) (i32.const 0)
                 (i32.const 8)))
               (drop (call $emit (i32.const 0) (i32.const 4)))"""
    extra = f'(data (i32.const 64) "{wat_bytes(path)}")'
    result = runner.run(runner.load(raw_guest(body, extra)))
    assert result.trap is None
    assert struct.unpack("<i", result.emitted[0])[0] != 0


def test_templates_are_readable(runner):
    path = b"chatml.jinja"
    body = f"""(i32.store (i32.const 0) (call $path_open (i32.const 3) (i32.const 0) (i32.const 64)
                 (i32.const {len(path)}) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8)))
               (drop (call $emit (i32.const 0) (i32.const 4)))"""
    extra = f'(data (i32.const 64) "{wat_bytes(path)}")'
    result = runner.run(runner.load(raw_guest(body, extra)))
    assert struct.unpack("<i", result.emitted[0])[0] == 0


def test_missing_memory_export(runner):
    wasm = wasmtime.wat2wasm("""(module
      (import "wasi_ephemeral_nn" "load_by_name" (func $l (param i32 i32 i32) (result i32)))
      (import "llama_host_v1" "emit" (func $emit (param i32 i32) (result i32)))
      (func (export "_start") (drop (call $l (i32.const 0) (i32.const 0) (i32.const 0)))))""")
    result = runner.run(runner.load(wasm))
    assert result.trap is None and result.exit_code == 0


def test_guest_built_for_another_host_abi_fails_to_load(runner):
    wasm = wasmtime.wat2wasm("""(module (import "llama_host_v2" "emit" (func (param i32 i32) (result i32)))
      (memory (export "memory") 1) (func (export "_start")))""")
    with pytest.raises(GuestLoadError, match="llama_host_v2.*provides wasi_ephemeral_nn, llama_host_v1"):
        runner.load(wasm)


@pytest.mark.parametrize("wasm", [b"", b"\0asm\1\0\0\0garbage", b"not wasm at all"])
def test_invalid_module(runner, wasm):
    with pytest.raises(GuestLoadError, match="not a valid WebAssembly module"):
        runner.load(wasm)


def test_normal_request_after_all_failures(runner, registry):
    test_compute_equals_the_engine(runner, registry)


# --- concurrency, caching -----------------------------------------------------------------------


def test_four_streaming_guests_are_batched(runner, registry):
    engine = registry.get("spm").engine
    programs, modules = [], []
    for i in range(4):
        p = Program()
        ctx, _ = session(p, b"spm", f"Story number {i}:".encode(), {"n-predict": 24, "temp": 0.0, "ignore-eos": True})
        p.stream(ctx, p.alloc(256), 256)
        programs.append(p)
        modules.append(runner.load(p.build()))
    before = engine.stats()
    results: list = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, runner.run(modules[i]))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = engine.stats()
    for i, (p, r) in enumerate(zip(programs, results)):
        errnos, pieces, _ = p.parse(r.emitted)
        assert errnos[-1] == E.END_OF_SEQUENCE
        assert b"".join(pieces).decode() == engine_text(registry, "spm", f"Story number {i}:".encode(), 24)
    assert after.generated_tokens - before.generated_tokens == 4 * 24
    assert after.decode_calls - before.decode_calls < 2 * 24  # far fewer than 96 + 4


def test_compiled_module_is_cached_on_disk(runner):
    wasm = raw_guest("")
    runner.load(wasm)
    files = sorted(runner.config.cache_dir.glob("*.cwasm"))
    assert files
    mtimes = [f.stat().st_mtime_ns for f in files]
    runner.load(wasm)
    assert [f.stat().st_mtime_ns for f in sorted(runner.config.cache_dir.glob("*.cwasm"))] == mtimes


def test_memory_grown_by_the_guest_is_usable(runner):
    p = Program(pages=1)
    name = p.data(b"default")
    p.raw("(drop (memory.grow (i32.const 1)))")
    p.raw(f"(memory.copy (i32.const 70000) (i32.const {name}) (i32.const 7))")
    p.call("load_by_name", 70000, 7, p.slot())  # a name in the new page
    p.call("load_by_name", 131070, 7, p.slot())  # still past the end
    errnos, _, _ = run(runner, p)
    assert errnos == [0, E.INVALID_ARGUMENT]


def test_embedding_through_wasi_nn(runner, registry):
    p = Program()
    ctx, _ = session(p, b"spm", b"Hello world", {"embedding": True})
    p.call("compute", ctx)
    output(p, ctx, 0, size=8192)
    graph, bare = p.slot(), p.slot()
    p.call("load_by_name", p.data(b"spm"), 3, graph)
    p.call("init_execution_context", load(graph), bare)
    p.call("set_input", load(bare), 1, p.tensor(b'{"embedding": true}'))
    p.call("compute", load(bare))  # no prompt
    errnos, _, (body,) = run(runner, p)
    assert errnos == [0] * 6 + [0, 0, 0, E.INVALID_ARGUMENT]
    data = json.loads(body)
    [(expected, _)] = registry.get("spm").embedder().embed(["Hello world"])
    assert data["n_embedding"] == 64 and data["embedding"] == pytest.approx(expected.tolist(), abs=1e-6)
