"""ggml's aborts, survived. ``GGML_ABORT`` and a failed ``GGML_ASSERT`` (a lost RPC worker, a
failed internal check) end the process by default. ggml calls an abort callback first; llama-host's
never returns to it: the engines it concerns are marked broken (their requests fail with a 503
naming the reason, /health reports them) and the aborting thread parks for good, holding whatever
llama.cpp state it held, so the rest of the server keeps serving.

Which engines: the one whose scheduler thread aborts, or, when another thread does (a ggml worker
thread, an RPC connection's sender), every engine at work (not idle) at that moment.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from typing import Protocol

from llama_host.engine import lib

log = logging.getLogger(__name__)


class Abortable(Protocol):
    def aborted(self, reason: str, *, own_thread: bool) -> bool:
        """Mark yourself broken if this abort is yours (``own_thread``: it is your thread's);
        True when it was."""


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_engines: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_installed: list = []  # the callback, kept alive as long as ggml may call it
_parked = threading.Event()  # (never set)


def watch(engine: Abortable) -> None:
    """Route ggml's aborts to ``engine`` (as long as it lives)."""
    install()
    with _lock:
        _engines.add(engine)


def install() -> None:
    with _lock:
        if _installed:
            return
        base = lib.loaded_library("libggml-base")
        setter = base.ggml_set_abort_callback
        setter.restype, setter.argtypes = ctypes.c_void_p, [_CALLBACK]
        callback = _CALLBACK(_on_abort)
        setter(callback)
        _installed.append(callback)


def _on_abort(message: bytes | None) -> None:
    reason = (message or b"").decode("utf-8", "replace").strip()
    # (ggml prefixes the source file and line; the text after them says what happened)
    said = reason.split(": ", 1)[-1] if ": " in reason else reason
    log.critical("llama.cpp aborted: %s", reason)
    try:
        with _lock:
            engines = list(_engines)
        mine = [e for e in engines if e.aborted(said, own_thread=True)]
        if not mine:
            mine = [e for e in engines if e.aborted(said, own_thread=False)]
        if not mine:
            log.critical("no engine was running llama.cpp when it aborted; its thread is parked")
    except BaseException:  # (never unwind into C)
        log.exception("handling llama.cpp's abort failed")
    _parked.wait()  # never returns: ggml would abort() the process after this callback
