"""Does Intel AMX actually work on this CPU?

Some virtual machines advertise AMX in CPUID (so ``-march=native`` compiles llama.cpp's AMX
kernels in) while the hypervisor does not enable the tile state, and the first AMX instruction
raises SIGILL. This module finds out without risking the calling process: a child process asks
the kernel for tile permission and executes ``ldtilecfg; tilezero; tilerelease``.

Stdlib only, so ``build.sh`` can run it as a script before anything is installed::

    python amx.py    # prints usable | unsupported | faulting; exit 0 only for usable
"""

from __future__ import annotations

import ctypes
import enum
import functools
import mmap
import platform
import signal
import subprocess
import sys


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


def build_cflags(cc: str = "cc") -> str:
    """Compiler flags for a native llama.cpp build: AMX compiled out only where ``-march=native``
    would enable it and its instructions fault (build.sh and bench/setup.sh use this)."""
    try:
        macros = subprocess.run([cc, "-march=native", "-dM", "-E", "-"], input="", capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    if "__AMX_INT8__" in macros and amx_state() is AmxState.FAULTING:
        return "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    return ""


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        sys.exit(_run_in_child())
    if sys.argv[1:] == ["--cflags"]:
        print(build_cflags())
        sys.exit(0)
    state = amx_state()
    print(state.value)
    sys.exit(0 if state is AmxState.USABLE else 1)
