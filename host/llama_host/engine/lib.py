"""libllama, through the low-level ctypes module of llama-cpp-python (pinned exactly).

``C`` is that module; everything else in the engine calls llama.cpp through it. ctypes releases
the GIL during each foreign call, so ``llama_decode`` runs in parallel with Python threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
from collections.abc import Iterator

import llama_cpp.llama_cpp as C

log = logging.getLogger("llama_host.llama_cpp")

# enum ggml_log_level in the vendored ggml.h
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_GGML_LOG_LEVEL_CONT = 5

_init_lock = threading.Lock()
_initialised = False
_pending = bytearray()  # llama.cpp logs a line in pieces; forward whole lines
_pending_level = logging.DEBUG
_capture = threading.local()  # errors(): llama.cpp's error lines of this thread, kept for a message


@C.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # Never raise into C. llama.cpp's INFO output (load details) goes to DEBUG: it is noisy.
    global _pending_level
    try:
        if level != _GGML_LOG_LEVEL_CONT:
            _pending_level = _LEVELS.get(level, logging.DEBUG)
        _pending.extend(text or b"")
        while (nl := _pending.find(b"\n")) >= 0:
            line = bytes(_pending[:nl]).decode("utf-8", "replace")
            del _pending[: nl + 1]
            if not line.strip():
                continue
            captured = getattr(_capture, "lines", None)
            if captured is not None and _pending_level >= logging.WARNING:
                captured.append(line.strip())
                log.debug("%s", line)
            else:
                log.log(_pending_level, "%s", line)
    except Exception:  # pragma: no cover - logging must not break inference
        pass


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its log into ``logging``."""
    global _initialised
    with _init_lock:
        if _initialised:
            return
        C.llama_log_set(_log_callback, ctypes.c_void_p(0))
        C.llama_backend_init()
        _initialised = True


@contextlib.contextmanager
def errors() -> Iterator[list[str]]:
    """Collects the warnings and errors llama.cpp logs on this thread meanwhile (model and
    context creation log from the calling thread) instead of logging them, so that a failure can
    say why in one message; they still go to the debug log."""
    previous = getattr(_capture, "lines", None)
    _capture.lines = lines = []
    try:
        yield lines
    finally:
        _capture.lines = previous


_FUNCTION_PREFIX = re.compile(r"^(?:[a-z_][a-z0-9_]*: )+")  # "llama_model_load: "


def reason(lines: list[str], default: str) -> str:
    """The most telling of captured lines: the first that says what went wrong (llama.cpp then
    adds generic ones, "failed to load model"), without function-name prefixes."""
    for line in lines:
        text = _FUNCTION_PREFIX.sub("", line).removeprefix("error loading model: ").strip()
        if text and not text.startswith("failed to "):
            return text
    return default


def system_info() -> str:
    """llama.cpp's feature line, e.g. ``CPU : SSE3 = 1 | AVX2 = 1 | ... | REPACK = 1 |``."""
    init_backend()
    return C.llama_print_system_info().decode("utf-8", "replace")


def system_features() -> dict[str, str]:
    """The ``NAME = value`` pairs of :func:`system_info`."""
    features = {}
    for part in system_info().split("|"):
        name, sep, value = part.rpartition("=")
        if sep:
            features[name.split(":")[-1].strip()] = value.strip()
    return features


def supports_gpu_offload() -> bool:
    init_backend()
    return bool(C.llama_supports_gpu_offload())


def loaded_library(stem: str) -> ctypes.CDLL:
    """``stem`` (``libggml``, ``libggml-base``) as libllama loaded it. A wheel holds no symbolic
    links, so llama-cpp-python's lib folder has copies (libggml.so, libggml.so.0, ...) that would
    load as separate libraries, each with its own state (backend registry, abort callback): the
    one libllama uses is its NEEDED soname (libggml.so.0), mapped since libllama loaded."""
    init_backend()
    try:
        with open("/proc/self/maps") as maps:
            mapped = {line.split()[-1] for line in maps if f"/{stem}.so." in line}
    except OSError:  # (not Linux: the copies' names differ there; take the plain one)
        mapped = set()
    sonamed = sorted(p for p in mapped if re.fullmatch(re.escape(stem) + r"\.so\.\d+", p.rsplit("/", 1)[-1]))
    if sonamed:
        return ctypes.CDLL(sonamed[0])
    import llama_cpp._ctypes_extensions as ext
    from pathlib import Path

    return ext.load_shared_library(stem.removeprefix("lib"), Path(C.__file__).parent / "lib")
