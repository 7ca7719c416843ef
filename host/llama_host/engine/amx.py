"""Does llama.cpp's AMX code actually run here? Two questions, each answered in a child process
so that a fault never reaches the caller:

- **The CPU** (:func:`amx_state`): some virtual machines advertise AMX in CPUID (so
  ``-march=native`` compiles ggml's AMX kernels in) while the hypervisor does not enable the tile
  state, and the first AMX instruction raises SIGILL. The child asks the kernel for tile
  permission and executes ``ldtilecfg; tilezero; tilerelease``. Stdlib only, so ``build.sh`` can
  run it as a script before anything is installed (``--cflags``).
- **The built library** (:func:`library_state`): a CPU whose AMX works can still fault in the
  library, because of how it was compiled (Debian's GCC 12 at ``-O1..-O3 -march=native`` drops
  the tile-shape stores of ggml's tile config, and the first tile instruction faults). So the
  verdict that counts comes from running the real thing: the child decodes a prompt with a
  generated Q4_0 model, which takes ggml's AMX matmul where AMX is compiled in and enabled.
  ``build.sh`` rebuilds without AMX where that child dies; the host loads models without extra
  buffer types (no AMX) where a library built elsewhere does.

    python amx.py            # the CPU: usable | unsupported | faulting; exit 0 only for usable
    python amx.py --library  # the installed library: works | faulting; exit 0 only for works
"""

from __future__ import annotations

import ctypes
import enum
import functools
import hashlib
import mmap
import platform
import signal
import subprocess
import sys
from pathlib import Path


class AmxState(str, enum.Enum):
    USABLE = "usable"  # the kernel grants tile state and the instructions run
    UNSUPPORTED = "unsupported"  # not x86-64 Linux, or the kernel refuses (ggml then skips AMX)
    FAULTING = "faulting"  # the kernel grants it, the CPU traps: AMX kernels would crash


_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

# ldtilecfg [rdi]; tilezero tmm0; tilerelease; ret
_CODE = bytes.fromhex("c4e2784907" "c4e27b49c0" "c4e27849c0" "c3")


def _run_in_child() -> int:
    """Body of the child process; its exit status is the verdict (SIGILL = faulting)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        return 3
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CODE)
    func = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    config = (ctypes.c_uint8 * 64)()
    config[0] = 1  # palette 1
    config[16] = 64  # tile 0: 64 bytes per row (colsb[0], little-endian u16)
    config[48] = 16  # tile 0: 16 rows
    func(ctypes.addressof(config))
    return 0


@functools.cache
def amx_state() -> AmxState:
    """Probe once per process (a child process, about 50 ms)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return AmxState.UNSUPPORTED
    child = subprocess.run(
        [sys.executable, "-S", __file__, "--child"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if child.returncode == 0:
        return AmxState.USABLE
    if child.returncode in (-signal.SIGILL, -signal.SIGSEGV):
        return AmxState.FAULTING
    return AmxState.UNSUPPORTED


class LibraryState(str, enum.Enum):
    WORKS = "works"  # the child decoded with the library's own kernels
    FAULTING = "faulting"  # the child died of a signal: the library's CPU code crashes here


FAULT_SIGNALS = (signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE)
NO_AMX_CFLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def verdict(returncode: int) -> LibraryState:
    """The probe child's exit status: killed by a fault signal (or aborted) means faulting; any
    other failure is not this question's and raises."""
    if returncode == 0:
        return LibraryState.WORKS
    if returncode in tuple(-s for s in FAULT_SIGNALS) or returncode == -signal.SIGABRT:
        return LibraryState.FAULTING
    raise RuntimeError(f"the library probe failed with exit status {returncode}")


def _probe_library_in_child() -> None:
    """Body of the library probe's child: prompt-sized batches through a Q4_0 model (ggml's AMX
    kernels take Q4_0 matmuls of more than one row), then a single-token decode."""
    from llama_host import modelgen
    from llama_host.engine.context import Batch, Context
    from llama_host.engine.model import Model

    path = modelgen.build("tiny", quant="q4_0", cache_dir=modelgen.user_cache_dir())
    with Model(path, extra_buffer_types=True) as model, Context(model, n_ctx=256, n_batch=64, n_threads=2) as ctx, \
            Batch(64) as batch:
        for pos in range(64):
            batch.add(pos % model.n_vocab, pos, 0, logits=pos == 63)
        ctx.decode(batch)
        batch.clear()
        batch.add(1, 64, 0, logits=True)
        ctx.decode(batch)


def _library_files() -> list[Path]:
    import llama_cpp

    return sorted(Path(llama_cpp.__file__).parent.joinpath("lib").glob("*"))


@functools.cache
def library_state() -> LibraryState:
    """Probe the installed llama.cpp once per process and library (a child, about 1 s; the
    verdict is kept in the user cache, keyed by the library files and this CPU)."""
    from llama_host import modelgen

    key = hashlib.sha256(platform.processor().encode() + _cpu_model())
    for f in _library_files():
        st = f.stat()
        key.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    cached = modelgen.user_cache_dir() / f"library-probe-{key.hexdigest()[:16]}"
    try:
        return LibraryState(cached.read_text().strip())
    except (OSError, ValueError):
        pass
    child = subprocess.run([sys.executable, __file__, "--library-child"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    try:
        state = verdict(child.returncode)
    except RuntimeError as e:
        raise RuntimeError(f"{e}: {child.stderr.decode(errors='replace')[-2000:]}") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(state.value)
    return state


def _cpu_model() -> bytes:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"model name")), b"")
    except OSError:
        return b""


def build_cflags(cc: str = "cc") -> str:
    """Compiler flags for a native llama.cpp build: AMX compiled out only where ``-march=native``
    would enable it and its instructions fault (build.sh and bench/setup.sh use this)."""
    try:
        macros = subprocess.run([cc, "-march=native", "-dM", "-E", "-"], input="", capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    if "__AMX_INT8__" in macros and amx_state() is AmxState.FAULTING:
        return NO_AMX_CFLAGS
    return ""


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        sys.exit(_run_in_child())
    if sys.argv[1:] == ["--cflags"]:
        print(build_cflags())
        sys.exit(0)
    if sys.argv[1:] == ["--cflags-no-amx"]:
        print(NO_AMX_CFLAGS)
        sys.exit(0)
    if sys.argv[1:] == ["--library-child"]:
        _probe_library_in_child()
        sys.exit(0)
    if sys.argv[1:] == ["--library"]:
        library = library_state()
        print(library.value)
        sys.exit(0 if library is LibraryState.WORKS else 3)
    state = amx_state()
    print(state.value)
    sys.exit(0 if state is AmxState.USABLE else 1)
