"""The models a process serves: one engine per ``--nn-preload`` name, loaded once, and the
files of ``--models-dir``, loaded on demand and unloaded when idle or to make room."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from llama_host.engine import Engine, EngineConfig, Model, aborts, lib
from llama_host.engine.context import ContextError
from llama_host.engine.engine import UnservableConfig
from llama_host.engine.model import LoadCancelled, ModelLoadError, Target
from llama_host.engine.embed import Embedder
from llama_host.errors import (
    EngineClosed, HostError, InsufficientMemory, ModelBusy, ModelLoadFailed, ModelNotFound, ModelPreloaded,
)
from llama_host.models_dir import ModelFile, estimate_bytes, file_bytes
from llama_host.preload import Preload
from llama_host.resource import Resource

log = logging.getLogger(__name__)
C = lib.C


@dataclasses.dataclass
class ServedModel:
    name: str
    model: Model
    engine: Engine
    pooling: int | None = None  # of embeddings (--pooling); None: the GGUF's, else mean
    _embedder: Embedder | None = None
    _ranker: Embedder | None = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def load(cls, name: str, preload_path, config: EngineConfig, pooling: int | None = None,
             **model_args) -> ServedModel:
        model = Model(preload_path, **model_args)
        try:
            engine = Engine(model, config)
            model.fewest_tokens("")  # (its vocabulary pass happens here, not in the first request: ~1 s at 262k)
        except BaseException:
            model.close()
            raise
        return cls(name, model, engine, pooling)

    def embedder(self) -> Embedder:
        """Created on first use: an embeddings context costs memory few deployments need."""
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(self.model, n_ctx=self.engine.config.ctx_size,
                                          threads=self.engine.config.threads, pooling=self.embedding_pooling)
            return self._embedder

    @property
    def embedding_pooling(self) -> int:
        """``pooling`` if given, else the GGUF's own (an embedding model's cls, mean or last), else
        mean: a causal model's hidden states averaged."""
        if self.pooling is not None:
            return self.pooling
        declared = self.model.meta(f"{self.model.info.architecture}.pooling_type")
        own = (C.LLAMA_POOLING_TYPE_MEAN, C.LLAMA_POOLING_TYPE_CLS, C.LLAMA_POOLING_TYPE_LAST)
        return int(declared) if declared in {str(p) for p in own} else C.LLAMA_POOLING_TYPE_MEAN

    @property
    def is_reranker(self) -> bool:
        """The GGUF declares rank pooling (a classification head scores a query and a document)."""
        arch = self.model.info.architecture
        return self.model.meta(f"{arch}.pooling_type") == str(C.LLAMA_POOLING_TYPE_RANK)

    def ranker(self) -> Embedder:
        """The reranking context (rank pooling), created on first use."""
        with self._lock:
            if self._ranker is None:
                self._ranker = Embedder(self.model, n_ctx=self.engine.config.ctx_size, threads=self.engine.config.threads,
                                        pooling=C.LLAMA_POOLING_TYPE_RANK)
            return self._ranker

    def close(self) -> None:
        try:  # (freeing memory held on an RPC worker that is gone makes llama.cpp abort)
            aborts.call(self._free)
        except aborts.Aborted as e:
            log.warning("%s: llama.cpp aborted freeing the model (%s); what it held is leaked", self.name, e.reason)

    def _free(self) -> None:
        self.engine.close()
        if self.engine.broken is not None:  # its thread is parked inside llama.cpp, on this model's memory
            log.warning("%s: leaking the model of a broken engine (freeing it could abort the process)", self.name)
            return
        for ctx in (self._embedder, self._ranker):
            if ctx is not None:
                ctx.close()
        self.model.close()


class LoadError(Exception):
    """A preload that cannot be served: its file does not load, or its context cannot be made."""

    def __init__(self, preload: Preload, reason: str) -> None:
        super().__init__(f"cannot load --nn-preload {preload.name!r} ({preload.path}): {reason}")
        self.preload = preload
        self.reason = reason


class ModelState(str, enum.Enum):
    """A model's state, in llama-server's router names (``status.value`` of GET /models)."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What on-demand models may take. Preloads stay loaded: they count against the memory
    budget (they take memory), not against ``max_loaded`` (they take no turn)."""

    max_loaded: int = 4  # on-demand models loaded at once; 0: no limit (llama-server's --models-max)
    memory_bytes: int | None = None  # estimated memory of every loaded model together; None: no budget
    keep_alive: float = -1.0  # seconds an idle on-demand model stays; negative: no limit; 0: unloaded once idle
    wait: float = 60.0  # seconds a request waits for room while every loaded model is busy (then a 503)


@dataclasses.dataclass(frozen=True)
class ModelStatus:
    name: str
    state: ModelState
    preloaded: bool
    path: Path
    loads: int  # times loaded (a preload: once)
    failure: str | None  # why its last load failed; cleared by one that works
    users: int  # requests using it or waiting for it


class _Attempt:
    """One load of a model: the requests that waited for it share its error."""

    def __init__(self) -> None:
        self.error: HostError | None = None


@dataclasses.dataclass(eq=False)
class _Entry:
    name: str
    path: Path
    target: Target
    preloaded: bool
    served: ServedModel | None = None
    loading: _Attempt | None = None
    resident: bool = False  # loaded, or loading with its room made: counts against the limits
    users: int = 0  # requests using it or waiting for it
    last_used: float = 0.0  # time.monotonic()
    memory: int = 0  # estimated bytes, while resident
    loads: int = 0
    failure: str | None = None
    broken: ModelLoadFailed | None = None  # llama.cpp aborted loading it: never loaded again

    @property
    def state(self) -> ModelState:
        if self.served is not None:
            return ModelState.LOADED
        return ModelState.LOADING if self.loading is not None else ModelState.UNLOADED

    @property
    def idle(self) -> bool:
        """Loaded on demand and nobody uses it or waits for it: it may be unloaded."""
        return self.served is not None and self.users == 0 and not self.preloaded


class Lease:
    """A model in use: never unloaded before :meth:`release` (idempotent)."""

    def __init__(self, registry: ModelRegistry, entry: _Entry, served: ServedModel, touch: bool) -> None:
        self.served = served
        self._registry, self._entry, self._touch = registry, entry, touch
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release(self._entry, self._touch)


class ModelRegistry(Resource):
    """Preloads, loaded before the server starts and kept, and on-demand models (--models-dir),
    loaded by the first request that names one and unloaded when idle: past ``keep_alive``, or
    to make room (least recently used first). Every use is counted (:meth:`use`), so no model is
    closed under a request. One condition guards the entries; loads read files outside it, so a
    request for a loaded model never waits behind another model's load."""

    def __init__(
        self, models: list[ServedModel] | None = None, *, on_demand: Sequence[ModelFile] = (),
        config: EngineConfig = EngineConfig(), n_gpu_layers: int | None = None, pooling: int | None = None,
        limits: Limits = Limits(), tensor_split: tuple[float, ...] | None = None,
    ) -> None:
        self.limits = limits
        self._config, self._n_gpu_layers, self._pooling = config, n_gpu_layers, pooling
        self._tensor_split = tensor_split
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._cancel = threading.Event()  # set by close(): on-demand loads under way stop
        self._entries: dict[str, _Entry] = {}
        for m in models or []:
            memory = file_bytes(m.model.path) + m.model.kv_bytes_per_token() * self._cells  # (as estimate_bytes)
            self._entries[m.name] = _Entry(m.name, m.model.path, Target.AUTO, preloaded=True, served=m, resident=True,
                                           memory=memory, loads=1)
        for f in on_demand:
            if f.name in self._entries:
                log.info("'%s' is a --nn-preload: the file %s is not served on demand", f.name, f.path.name)
                continue
            self._entries[f.name] = _Entry(f.name, f.path, f.target, preloaded=False)
        self._expiry: threading.Thread | None = None
        if limits.keep_alive > 0 and self.has_on_demand:
            self._expiry = threading.Thread(target=self._expire, name="model-keep-alive", daemon=True)
            self._expiry.start()

    @classmethod
    def load(
        cls, preloads: list[Preload], config: EngineConfig = EngineConfig(), n_gpu_layers: int | None = None,
        pooling: int | None = None, *, on_demand: Sequence[ModelFile] = (), limits: Limits = Limits(),
        tensor_split: tuple[float, ...] | None = None, cancel: threading.Event | None = None,
    ) -> ModelRegistry:
        """Loads the preloads now (``n_gpu_layers`` overrides what each one's target implies);
        ``on_demand`` models wait for a request. A preload that does not load raises
        :class:`LoadError`, after freeing the ones loaded before it; ``cancel`` set meanwhile
        stops the load with LoadCancelled, freeing everything."""
        loaded: list[ServedModel] = []
        try:
            for p in preloads:
                if cancel is not None and cancel.is_set():
                    raise LoadCancelled("the load was cancelled")
                log.info("loading %s from %s (target %s)", p.name, p.path, p.target.name)
                try:
                    loaded.append(aborts.call(ServedModel.load, p.name, p.path, config, pooling, target=p.target,
                                              n_gpu_layers=n_gpu_layers, tensor_split=tensor_split, cancel=cancel))
                except ModelLoadError as e:
                    raise LoadError(p, e.reason) from e
                except aborts.Aborted as e:
                    raise LoadError(p, str(e)) from None
                except (UnservableConfig, ContextError, OSError) as e:
                    raise LoadError(p, str(e)) from e
                except MemoryError:
                    raise LoadError(p, "out of memory") from None
            return cls(loaded, on_demand=on_demand, config=config, n_gpu_layers=n_gpu_layers, pooling=pooling,
                       limits=limits, tensor_split=tensor_split)
        except BaseException:
            for served in loaded:
                served.close()
            raise

    # --- lookups ------------------------------------------------------------------------------

    def get(self, name: str) -> ServedModel | None:
        """The model if it is loaded, not counted as in use: for preloads, which stay loaded
        (anything else goes through :meth:`use`)."""
        with self._cond:
            entry = self._entries.get(name)
            return entry.served if entry is not None else None

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def has_on_demand(self) -> bool:
        return any(not e.preloaded for e in self._entries.values())

    def statuses(self) -> dict[str, ModelStatus]:
        with self._cond:
            return {e.name: ModelStatus(e.name, e.state, e.preloaded, e.path, e.loads, e.failure, e.users)
                    for e in self._entries.values()}

    # --- use ----------------------------------------------------------------------------------

    def acquire(self, name: str, *, load: bool = True, touch: bool = True) -> Lease | None:
        """``name``'s model, in use until the lease is released; loaded first where it is not
        (``load=False``: None instead). ``touch=False`` leaves its idle time as it was. Raises
        ModelNotFound, ModelLoadFailed, ModelBusy, InsufficientMemory or EngineClosed."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFound(f"no model '{name}' (have: {', '.join(self._entries)})")
            if entry.served is None and not load:
                return None
            entry.users += 1
            try:
                served = self._ready(entry)
            except BaseException:
                entry.users -= 1
                self._cond.notify_all()
                raise
            if touch:
                entry.last_used = time.monotonic()
            return Lease(self, entry, served, touch)

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[ServedModel]:
        """``with registry.use(name) as served:`` (loads it where needed; blocking: not on an event loop)."""
        lease = self.acquire(name)
        try:
            yield lease.served
        finally:
            lease.release()

    @contextlib.contextmanager
    def peek(self, name: str) -> Iterator[ServedModel | None]:
        """The model if loaded (held meanwhile), else None; neither loads it nor counts as a use
        that keeps it alive: for views such as /metrics."""
        try:
            lease = self.acquire(name, load=False, touch=False)
        except EngineClosed:  # (shutting down: nothing to show)
            lease = None
        try:
            yield lease.served if lease is not None else None
        finally:
            if lease is not None:
                lease.release()

    def load_model(self, name: str) -> None:
        """Loads ``name`` now (POST /models/load). With ``keep_alive`` 0 it is unloaded again at once."""
        self.acquire(name).release()

    def unload(self, name: str) -> bool:
        """Unloads an on-demand model now; False where it was not loaded. Raises ModelNotFound,
        ModelPreloaded, or ModelBusy while requests use it (it is never closed under them)."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFound(f"no model '{name}' (have: {', '.join(self._entries)})")
            if entry.preloaded:
                raise ModelPreloaded(f"the model '{name}' is preloaded (--nn-preload): it stays loaded")
            if entry.users:
                raise ModelBusy(f"the model '{name}' is in use by {entry.users} request(s); unload it when they are done")
            if entry.served is None:
                return False
            self._unload(entry, "unload request")
            return True

    def _release(self, entry: _Entry, touch: bool) -> None:
        with self._cond:
            entry.users -= 1
            if touch:
                entry.last_used = time.monotonic()
                if entry.idle and self.limits.keep_alive == 0 and not self._closing:
                    self._unload(entry, "idle, --keep-alive 0")
            self._cond.notify_all()  # (room for a waiting load; the keep-alive timer recounts)

    # --- loading and unloading (the lock held) ------------------------------------------------

    def _ready(self, entry: _Entry) -> ServedModel:
        """The loaded model: at once, after the load in progress, or after loading it here."""
        deadline = time.monotonic() + self.limits.wait
        while True:
            if self._closing:
                raise EngineClosed()
            if entry.served is not None:
                return entry.served
            if entry.broken is not None:
                raise ModelLoadFailed(str(entry.broken))
            if entry.loading is None:
                self._load(entry, deadline)
                continue
            attempt = entry.loading
            while entry.loading is attempt and not self._closing:
                self._cond.wait()  # (a load in progress is waited for whatever it takes: no 503 while loading)
            if attempt.error is not None and not self._closing:
                raise type(attempt.error)(str(attempt.error))  # (each waiter raises its own)

    def _load(self, entry: _Entry, deadline: float) -> None:
        """Makes room for ``entry`` and loads it; the lock is released while files are read."""
        attempt = entry.loading = _Attempt()
        try:
            need = 0
            if self.limits.memory_bytes is not None:
                with self._unlocked():
                    need = self._estimate(entry)
            self._make_room(entry, need, deadline)
            entry.resident, entry.memory = True, need
            log.info("loading %s from %s", entry.name, entry.path)
            started = time.monotonic()
            with self._unlocked():
                served = self._open(entry)
            if self._closing:
                served.close()
                raise EngineClosed()
            entry.served, entry.failure = served, None
            entry.loads += 1
            log.info("loaded %s in %.2f s", entry.name, time.monotonic() - started)
        except ModelLoadFailed as e:
            log.warning("%s", e)
            entry.failure, attempt.error = str(e), e
            raise
        except (ModelBusy, InsufficientMemory) as e:
            attempt.error = e
            raise
        except EngineClosed:
            raise
        except Exception as e:
            log.exception("loading %s failed", entry.name)
            error = ModelLoadFailed(f"cannot load the model '{entry.name}': internal error ({type(e).__name__}: {e})")
            entry.failure, attempt.error = str(error), error
            raise error from e
        finally:
            if entry.served is None:
                entry.resident, entry.memory = False, 0
            entry.loading = None
            self._cond.notify_all()

    def _make_room(self, entry: _Entry, need: int, deadline: float) -> None:
        """Unloads idle on-demand models, least recently used first, until ``entry`` fits both
        limits; while the models in the way are busy, waits for one to go idle, until ``deadline``."""
        budget, limit = self.limits.memory_bytes, self.limits.max_loaded
        if budget is not None:
            kept = sum(e.memory for e in self._entries.values() if e.preloaded)
            if need > budget - kept:
                raise InsufficientMemory(
                    f"the model '{entry.name}' needs about {_mib(need)} MiB (weights and KV cache), more than the "
                    f"{_mib(budget - kept)} MiB left of --models-max-memory {_mib(budget)} MiB by the preloaded models")
        while True:
            others = [e for e in self._entries.values() if e is not entry and e.resident]
            over_count = limit > 0 and sum(not e.preloaded for e in others) >= limit
            over_memory = budget is not None and sum(e.memory for e in others) + need > budget
            if not (over_count or over_memory):
                return
            idle = [e for e in others if e.idle]
            if idle:
                self._unload(min(idle, key=lambda e: e.last_used), f"to make room for {entry.name}")
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if over_memory:
                    raise InsufficientMemory(
                        f"the model '{entry.name}' needs about {_mib(need)} MiB, and the models that use the rest of "
                        f"--models-max-memory {_mib(budget)} MiB stayed busy for {self.limits.wait:g} s; retry shortly")
                raise ModelBusy(f"cannot load the model '{entry.name}': the {limit} models loaded (--models-max) "
                                f"stayed busy for {self.limits.wait:g} s; retry shortly")
            self._cond.wait(remaining)

    @property
    def _cells(self) -> int:
        return self._config.ctx_size * self._config.parallel

    def _estimate(self, entry: _Entry) -> int:
        """Memory the model will take, from its GGUF header (a file that has none fails here)."""
        try:
            return estimate_bytes(entry.path, self._cells)
        except ValueError as e:
            raise ModelLoadFailed(f"cannot load the model '{entry.name}' ({entry.path.name}): {e}") from None

    def _open(self, entry: _Entry) -> ServedModel:
        try:
            return aborts.call(ServedModel.load, entry.name, entry.path, self._config, self._pooling,
                               target=entry.target, n_gpu_layers=self._n_gpu_layers, tensor_split=self._tensor_split,
                               cancel=self._cancel)
        except aborts.Aborted as e:  # (what it left half-made is held by a parked thread: no second try)
            entry.broken = ModelLoadFailed(f"cannot load the model '{entry.name}' ({entry.path.name}): {e}; "
                                           "restart the server to try again")
            raise entry.broken from None
        except LoadCancelled:
            raise EngineClosed() from None
        except ModelLoadError as e:
            reason = e.reason
        except (UnservableConfig, ContextError, OSError) as e:
            reason = str(e)
        except MemoryError:
            reason = "out of memory"
        raise ModelLoadFailed(f"cannot load the model '{entry.name}' ({entry.path.name}): {reason}")

    def _unload(self, entry: _Entry, why: str) -> None:
        """Frees the engine, its contexts and the model. Under the lock, so that the memory is
        free before the next load is decided (an idle engine stops at once)."""
        served, entry.served = entry.served, None
        entry.resident, entry.memory = False, 0
        if served is not None:
            served.close()
            log.info("unloaded %s (%s)", entry.name, why)
        self._cond.notify_all()

    @contextlib.contextmanager
    def _unlocked(self) -> Iterator[None]:
        self._cond.release()
        try:
            yield
        finally:
            self._cond.acquire()

    def _expire(self) -> None:
        """The keep-alive timer (a thread): unloads on-demand models idle ``keep_alive`` seconds;
        every release wakes it to recount."""
        keep = self.limits.keep_alive
        with self._cond:
            while not self._closing:
                now, wake = time.monotonic(), None
                for entry in list(self._entries.values()):
                    if entry.idle:
                        left = entry.last_used + keep - now
                        if left <= 0:
                            self._unload(entry, f"idle for {keep:g} s, --keep-alive")
                        else:
                            wake = left if wake is None else min(wake, left)
                self._cond.wait(wake)

    def close(self) -> None:
        """Frees every model, in use or not (the server has stopped its requests by then)."""
        with self._cond:
            self._closing = True
            self._cancel.set()
            self._cond.notify_all()
        if self._expiry is not None:
            self._expiry.join()
        with self._cond:
            for entry in self._entries.values():
                self._unload(entry, "closing")


def _mib(n: int) -> int:
    return -(-n // (1 << 20))
