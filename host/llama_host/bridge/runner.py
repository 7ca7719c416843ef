"""Runs guests: compiled once (cached on disk), a fresh sandboxed instance per run.

Sandbox: WASI with no environment and no network unless given, no inherited stdio unless asked
(guest output goes to the host log), the templates folder preopened read-only, a memory cap,
and an epoch deadline on the guest's own computation that is reset whenever a host import
returns, so time spent generating never counts against it. A trap ends that run only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import importlib.metadata
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi  # the C API's unchecked host functions (wasmtime is pinned)

from llama_host.bridge import hostext, wasi_nn
from llama_host.bridge.abi import Errno, NnError
from llama_host.bridge.memory import GuestMemory
from llama_host.engine import Cancellation
from llama_host.errors import HostError
from llama_host.registry import ModelRegistry
from llama_host.resource import Resource

log = logging.getLogger(__name__)
guest_log = logging.getLogger("llama_host.guest")

EPOCH_TICK = 0.01  # seconds per epoch increment

# Every import, its parameter count; all take and return i32.
_NN_IMPORTS = {
    "load": 5, "load_by_name": 3, "load_by_name_with_config": 5, "init_execution_context": 2,
    "set_input": 3, "compute": 1, "compute_single": 1, "fini_single": 1, "get_output": 5,
    "get_output_single": 5, "unload": 1, "finalize_execution_context": 1,
}
_EXT_IMPORTS = {
    "abi_version": 0, "model_info": 4, "request_size": 0, "request_read": 3, "emit": 2, "last_error": 3,
}
_EXT_VALUES = {"abi_version", "request_size"}  # return a value, not an errno


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    memory_limit: int = 256 << 20  # bytes of linear memory a guest may have
    deadline: float = 5.0  # seconds of guest computation between host calls
    templates_dir: Path | None = None  # preopened read-only at /templates
    cache_dir: Path | None = None  # compiled modules; default ~/.cache/llama-host/wasm


class GuestLoadError(Exception):
    """The module is not valid wasm, or imports something this host does not provide."""


@dataclasses.dataclass(frozen=True)
class Guest:
    """A compiled guest, linked against this host's imports and ready to instantiate."""

    module: wasmtime.Module
    pre: wasmtime.InstancePre


@dataclasses.dataclass
class RunResult:
    exit_code: int  # the guest's proc_exit code (0 when _start returns), or -1 on a trap
    trap: str | None = None  # why the guest was stopped, if it was
    emitted: list[bytes] = dataclasses.field(default_factory=list)
    failure: HostError | None = None  # the host's typed error behind a failed generation (NnSession.failure)


class _Instance:
    """What the host functions of one running guest act on (found through a thread-local:
    a guest runs start to finish on one thread, and the linker is shared)."""

    def __init__(self, store: wasmtime.Store, nn: wasi_nn.NnSession, ext: hostext.HostExt, ticks: int) -> None:
        self.store, self.nn, self.ext, self.ticks = store, nn, ext, ticks
        self.memory: GuestMemory | None = None  # set once instantiated

    def memory_or_fail(self) -> GuestMemory:
        if self.memory is None:
            raise NnError(Errno.MISSING_MEMORY, "the guest exports no memory named 'memory'")
        return self.memory

    def reset_deadline(self) -> None:
        self.store.set_epoch_deadline(self.ticks)


_current = threading.local()


def _host_function(target: str, name: str, n_params: int, returns_value: bool) -> Callable:
    """One import as a raw callback: wasmtime's unchecked function API hands over the i32
    arguments in place and takes the result in the first slot. It costs about 1 µs a call,
    against 9 µs through wasmtime-py's generic trampoline (Caller and Val objects per call),
    and a streamed token takes three calls."""

    def call(_env: int, _caller: object, values: ctypes.Array, _n: int) -> int:
        instance: _Instance = _current.instance
        try:
            obj = instance.nn if target == "nn" else instance.ext
            args = [values[i].i32 for i in range(n_params)]
            rc = getattr(obj, name)(instance.memory or instance.memory_or_fail(), *args)
            values[0].i32 = int(rc) if returns_value else int(Errno.SUCCESS if rc is None else rc)
        except NnError as e:
            log.debug("%s: %s", name, e)
            instance.ext.error_message = str(e)
            values[0].i32 = int(e.errno)
        except Exception:  # never let Python unwind into wasmtime
            log.exception("host function %s failed", name)
            values[0].i32 = int(Errno.RUNTIME_ERROR)
        finally:
            instance.reset_deadline()
        return 0  # no trap

    return call


_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _env: None)


class GuestRunner(Resource):
    def __init__(self, registry: ModelRegistry, config: RunnerConfig = RunnerConfig()) -> None:
        self.registry = registry
        self.config = config
        wasm_config = wasmtime.Config()
        wasm_config.epoch_interruption = True
        wasm_config.memory_may_move = False  # GuestMemory keeps the base address
        self.engine = wasmtime.Engine(wasm_config)
        self._engine_key = f"wasmtime-{importlib.metadata.version('wasmtime')}|epoch|fixed-memory"
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self._callbacks = []  # ctypes callbacks must outlive the linker
        for module, target, imports in ((wasi_nn.MODULE, "nn", _NN_IMPORTS), (hostext.MODULE, "ext", _EXT_IMPORTS)):
            for name, n_params in imports.items():
                ty = wasmtime.FuncType([wasmtime.ValType.i32()] * n_params, [wasmtime.ValType.i32()])
                callback = ffi.wasmtime_func_unchecked_callback_t(_host_function(target, name, n_params, name in _EXT_VALUES))
                self._callbacks.append(callback)
                m, n = module.encode(), name.encode()
                error = ffi.wasmtime_linker_define_func_unchecked(
                    self.linker.ptr(), ctypes.create_string_buffer(m), len(m), ctypes.create_string_buffer(n), len(n),
                    ty.ptr(), callback, None, _NO_FINALIZER,
                )
                if error:
                    raise wasmtime.WasmtimeError._from_ptr(error)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(EPOCH_TICK):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()

    # --- modules ------------------------------------------------------------------------------

    def load(self, wasm: Path | bytes) -> Guest:
        """Compile and link a guest. The compiled artifact is cached on disk, keyed by the
        wasm's hash and the wasmtime version and settings, so restarts skip compilation."""
        data = Path(wasm).read_bytes() if isinstance(wasm, (str, Path)) else bytes(wasm)
        module = self._compile(data)
        try:
            return Guest(module, self.linker.instantiate_pre(module))
        except wasmtime.WasmtimeError as e:
            raise GuestLoadError(
                f"cannot link the guest: {_first_line(e)} (this host provides {wasi_nn.MODULE}, "
                f"{hostext.MODULE} and WASI preview 1)"
            ) from e

    def _compile(self, data: bytes) -> wasmtime.Module:
        key = hashlib.sha256(self._engine_key.encode() + b"\0" + data).hexdigest()[:32]
        cache_dir = self.config.cache_dir or Path(
            os.environ.get("LLAMA_HOST_CACHE") or Path.home() / ".cache" / "llama-host"
        ) / "wasm"
        cached = cache_dir / f"{key}.cwasm"
        if cached.is_file():
            try:
                return wasmtime.Module.deserialize_file(self.engine, str(cached))
            except wasmtime.WasmtimeError:
                log.warning("discarding unusable compiled guest %s", cached)
        try:
            module = wasmtime.Module(self.engine, data)
        except wasmtime.WasmtimeError as e:
            raise GuestLoadError(f"not a valid WebAssembly module: {_first_line(e)}") from e
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(module.serialize())
            tmp.replace(cached)
        except OSError as e:
            log.warning("cannot cache the compiled guest in %s: %s", cache_dir, e)
        return module

    # --- runs ---------------------------------------------------------------------------------

    def run(
        self,
        guest: Guest,
        *,
        argv: Sequence[str] = ("guest",),
        env: Mapping[str, str] | None = None,
        dirs: Sequence[tuple[str, str]] = (),
        inherit_stdio: bool = False,
        request: bytes = b"",
        on_emit: Callable[[bytes], None] | None = None,
        allow_host_paths: bool = False,
        cancel: Cancellation | None = None,
    ) -> RunResult:
        """Run a WASI command module's ``_start`` in a fresh instance (blocking; call it from a
        worker thread, many at once). Setting ``cancel`` stops the generations it started."""
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self.config.memory_limit)
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(argv)
        if env:
            wasi.env = list(env.items())
        if self.config.templates_dir is not None:
            wasi.preopen_dir(str(self.config.templates_dir), "/templates", fs_mutable=False)
        for host_dir, guest_dir in dirs:
            wasi.preopen_dir(host_dir, guest_dir)
        if inherit_stdio:
            wasi.inherit_stdin()
            wasi.inherit_stdout()
            wasi.inherit_stderr()
            stream = _write_stdout
        else:
            wasi.stdout_custom = _log_output("stdout")
            wasi.stderr_custom = _log_output("stderr")
            stream = None
        store.set_wasi(wasi)

        nn = wasi_nn.NnSession(self.registry, allow_host_paths=allow_host_paths, stream_stdout=stream, cancel=cancel)
        ext = hostext.HostExt(nn, request, on_emit)
        ticks = max(1, math.ceil(self.config.deadline / EPOCH_TICK))
        instance = _Instance(store, nn, ext, ticks)
        previous = getattr(_current, "instance", None)
        _current.instance = instance
        try:
            instance.reset_deadline()
            exports = guest.pre.instantiate(store).exports(store)
            memory = exports.get("memory")
            if isinstance(memory, wasmtime.Memory):
                instance.memory = GuestMemory(memory, store)
            start = exports.get("_start")
            if not isinstance(start, wasmtime.Func):
                return RunResult(-1, "the guest exports no _start function", ext.emitted)
            start(store)
            return RunResult(0, None, ext.emitted, nn.failure)
        except wasmtime.ExitTrap as e:
            return RunResult(e.code, None, ext.emitted, nn.failure)
        except wasmtime.Trap as e:
            # wasmtime puts the cause last, after the backtrace
            reason = "deadline exceeded" if e.trap_code == wasmtime.TrapCode.INTERRUPT else _last_line(e)
            log.warning("guest trapped: %s", reason)
            return RunResult(-1, reason, ext.emitted)
        except wasmtime.WasmtimeError as e:
            log.warning("guest failed: %s", e)
            return RunResult(-1, _first_line(e), ext.emitted)
        finally:
            _current.instance = previous
            nn.close()
            store.close()


def _first_line(error: Exception) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _last_line(error: Exception) -> str:
    return next((line.strip() for line in reversed(str(error).splitlines()) if line.strip()), type(error).__name__)


def _log_output(stream: str) -> Callable[[bytes], None]:
    level = logging.WARNING if stream == "stderr" else logging.INFO  # a guest's stderr carries its warnings

    def write(data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                guest_log.log(level, "%s: %s", stream, line)

    return write


def _write_stdout(data: bytes) -> None:
    import sys

    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
