"""ggml's aborts, survived. ``GGML_ABORT`` and a failed ``GGML_ASSERT`` (a lost RPC worker, a
failed internal check) end the process by default. ggml calls an abort callback first; llama-host's
never returns to it: the engines it concerns are marked broken (their requests fail with a 503
naming the reason, /health reports them) and the aborting thread parks for good, holding whatever
llama.cpp state it held, so the rest of the server keeps serving.

Which engines: the one whose scheduler thread aborts, or, when another thread does (a ggml worker
thread, an RPC connection's sender), every engine at work (not idle) at that moment. Work outside
the engines (loading a model: a GGUF that trips a check, a worker lost mid-upload; freeing one)
runs through ``call``, in a thread of its own whose abort is its caller's exception; an abort on
a thread that is neither an engine's nor such a call's, with no engine at work, is every call's
in progress.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

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
_calls: dict[int, Callable[[str], None]] = {}  # thread id -> what to do when it aborts (``call``)

T = TypeVar("T")


class Aborted(RuntimeError):
    """llama.cpp aborted in work run by ``call``; its thread is parked, holding what it held."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"llama.cpp aborted ({reason})")
        self.reason = reason


def call(work: Callable[..., T], *args, **kwargs) -> T:
    """``work(*args, **kwargs)`` on a thread of its own, its result or exception returned or
    raised here; where ggml aborts in it, Aborted is raised here instead (that thread never
    returns), so a caller waiting for a load is answered rather than parked with it."""
    install()
    done = threading.Event()
    outcome: list = []

    def aborted(reason: str) -> None:  # (on the aborting thread)
        outcome.append(Aborted(reason))
        done.set()

    def run() -> None:
        with _lock:
            _calls[threading.get_ident()] = aborted
        try:
            outcome.append((work(*args, **kwargs),))
        except BaseException as e:
            outcome.append(e)
        finally:
            with _lock:
                _calls.pop(threading.get_ident(), None)
            done.set()

    threading.Thread(target=run, name=f"guarded-{getattr(work, '__name__', 'work')}", daemon=True).start()
    done.wait()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0][0]


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
    try:
        with _lock:
            engines = list(_engines)
            guarded = _calls.pop(threading.get_ident(), None)
        if guarded is not None:  # (its caller says what failed)
            log.info("llama.cpp aborted: %s", reason)
            guarded(said)
            _parked.wait()
        log.critical("llama.cpp aborted: %s", reason)
        mine = [e for e in engines if e.aborted(said, own_thread=True)]
        if not mine:
            mine = [e for e in engines if e.aborted(said, own_thread=False)]
        if not mine:  # (a thread llama.cpp started for work ``call`` runs: freeing a model waits on it)
            with _lock:
                mine = list(_calls.values())
                _calls.clear()
            for guarded in mine:
                guarded(said)
        if not mine:
            log.critical("no engine was running llama.cpp when it aborted; its thread is parked")
    except BaseException:  # (never unwind into C)
        log.exception("handling llama.cpp's abort failed")
    _parked.wait()  # never returns: ggml would abort() the process after this callback
