"""ggml's backend devices, and llama.cpp's RPC backend: a model larger than one machine, split
over ``rpc-server`` workers (its weights and KV cache on each as ``--tensor-split`` says).

build.sh compiles the RPC backend from the pinned llama.cpp source into a library beside
libggml (``libggml-rpc.so``), loaded only when ``--rpc`` or ``llama-host rpc-server`` asks for it:
without it nothing changes. Workers are added through ggml's backend registry, as llama.cpp's
own ``common`` does (``ggml_backend_reg_get_proc_address(reg, "ggml_backend_rpc_add_server")``).

llama.cpp aborts the process when it cannot reach or handshake with a worker, so every worker
is first tried in a child process (:func:`check_workers`): an unreachable one is a clear error.
The RPC protocol has no authentication or encryption: run workers on a trusted network only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import ipaddress
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import llama_cpp

from llama_host.engine import lib

_SUFFIX = ".dylib" if sys.platform == "darwin" else ".so"
RPC_LIBRARY = Path(llama_cpp.__file__).parent / "lib" / f"libggml-rpc{_SUFFIX}"
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}  # enum ggml_backend_dev_type


class RpcError(RuntimeError):
    """The RPC backend is missing, or a worker cannot be used."""


@functools.cache
def _ggml() -> ctypes.CDLL:
    """libggml's registry functions (llama-cpp-python declares none of them)."""
    g = lib.loaded_library("libggml")
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (
        ("ggml_backend_load", vp, [cp]), ("ggml_backend_reg_by_name", vp, [cp]),
        ("ggml_backend_reg_get_proc_address", vp, [vp, cp]), ("ggml_backend_register", None, [vp]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []), ("ggml_backend_dev_get", vp, [ctypes.c_size_t]),
        ("ggml_backend_dev_name", cp, [vp]), ("ggml_backend_dev_description", cp, [vp]),
        ("ggml_backend_dev_type", ctypes.c_int, [vp]),
        ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]),
    ):
        fn = getattr(g, name)
        fn.restype, fn.argtypes = res, args
    return g


@dataclasses.dataclass(frozen=True)
class Device:
    name: str  # "CPU", "CUDA0", "RPC0", ...
    description: str
    kind: str  # cpu, gpu, igpu, accel
    free_bytes: int
    total_bytes: int


def devices() -> list[Device]:
    """Every device ggml knows, with its memory now (an RPC device asks its worker)."""
    lib.init_backend()
    g = _ggml()
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(Device(g.ggml_backend_dev_name(dev).decode(), (g.ggml_backend_dev_description(dev) or b"").decode(),
                          DEVICE_TYPES.get(g.ggml_backend_dev_type(dev), "unknown"), free.value, total.value))
    return out


def parse_endpoint(value: str) -> str:
    """``HOST:PORT`` checked (llama.cpp aborts on one it cannot parse)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RpcError(f"--rpc {value!r}: expected HOST:PORT, e.g. 192.168.1.10:50052")
    if host.startswith("[") or ":" in host:
        raise RpcError(f"--rpc {value!r}: IPv6 addresses are not supported by llama.cpp's RPC client")
    return f"{host}:{int(port)}"


def _rpc_registry() -> int:
    """The RPC backend, loaded and registered once."""
    lib.init_backend()
    g = _ggml()
    reg = g.ggml_backend_reg_by_name(b"RPC")
    if reg:
        return reg
    if not RPC_LIBRARY.is_file():
        raise RpcError(f"llama.cpp's RPC backend is not built ({RPC_LIBRARY} is missing): run ./build.sh")
    reg = g.ggml_backend_load(str(RPC_LIBRARY).encode())
    if not reg:
        raise RpcError(f"ggml could not load its RPC backend from {RPC_LIBRARY} (the log says why)")
    return reg


def _proc(name: str, restype, *argtypes):
    address = _ggml().ggml_backend_reg_get_proc_address(_rpc_registry(), name.encode())
    if not address:
        raise RpcError(f"the RPC backend has no {name}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


def add_workers(endpoints: list[str]) -> None:
    """Register each worker's devices (after :func:`check_workers`: llama.cpp aborts on one it
    cannot reach); models loaded afterwards offload their layers to them."""
    add = _proc("ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
    for endpoint in endpoints:
        reg = add(endpoint.encode())
        if not reg:
            raise RpcError(f"the RPC worker {endpoint} could not be added")
        _ggml().ggml_backend_register(reg)


CHECK_TIMEOUT_S = 30.0


def check_workers(endpoints: list[str]) -> None:
    """Connect to every worker in a child process, where llama.cpp's abort on an unreachable or
    wrong server (a version mismatch, not an rpc-server) ends only the child."""
    code = ("import sys; from llama_host.engine import devices; devices.add_workers(sys.argv[1:]); "
            "print(len([d for d in devices.devices() if d.name.startswith('RPC')]))")
    for endpoint in endpoints:
        try:
            child = subprocess.run([sys.executable, "-c", code, endpoint], capture_output=True, text=True,
                                   timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RpcError(f"the RPC worker {endpoint} did not answer in {CHECK_TIMEOUT_S:.0f} s") from None
        if child.returncode != 0:
            said = [line.split(": ", 1)[-1] for line in child.stderr.splitlines()
                    if "Failed to" in line or "failed" in line or "Error" in line or "error" in line]
            raise RpcError(f"cannot use the RPC worker {endpoint}: " + (said[-1].strip() if said else
                           f"llama.cpp could not connect to it (exit status {child.returncode})"))


def worker(host: str, port: int, threads: int, cache_dir: Path | None) -> Callable[[], None]:
    """llama.cpp's RPC server on this machine's devices (its GPUs, else its CPU), ready to run:
    calling the result serves and never returns. Raises RpcError without the RPC backend."""
    try:
        if not ipaddress.ip_address(host).is_loopback:
            lib.log.warning("the RPC worker listens on %s: llama.cpp's RPC protocol has no authentication or "
                            "encryption; expose it to a trusted network only", host)
    except ValueError:
        pass
    start = _proc("ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
    g = _ggml()
    every = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
    local = [d for d in every if g.ggml_backend_dev_type(d) != 0 and not g.ggml_backend_dev_name(d).startswith(b"RPC")]
    local = local or [d for d in every if g.ggml_backend_dev_type(d) == 0]
    chosen = (ctypes.c_void_p * len(local))(*local)
    endpoint, cache = f"{host}:{port}".encode(), str(cache_dir).encode() if cache_dir else None
    return lambda: start(endpoint, cache, threads, len(local), chosen)
