"""The models a process serves: one engine per ``--nn-preload`` name, loaded once."""

from __future__ import annotations

import dataclasses
import logging
import threading

from llama_host.engine import Engine, EngineConfig, Model, lib
from llama_host.engine.context import ContextError
from llama_host.engine.engine import UnservableConfig
from llama_host.engine.model import ModelLoadError
from llama_host.engine.embed import Embedder
from llama_host.preload import Preload
from llama_host.resource import Resource

log = logging.getLogger(__name__)
C = lib.C


@dataclasses.dataclass
class ServedModel:
    name: str
    model: Model
    engine: Engine
    _embedder: Embedder | None = None
    _ranker: Embedder | None = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def load(cls, name: str, preload_path, config: EngineConfig, **model_args) -> ServedModel:
        model = Model(preload_path, **model_args)
        try:
            engine = Engine(model, config)
        except BaseException:
            model.close()
            raise
        return cls(name, model, engine)

    def embedder(self) -> Embedder:
        """Created on first use: an embeddings context costs memory few deployments need."""
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(self.model, n_ctx=self.engine.config.ctx_size,
                                          threads=self.engine.config.threads)
            return self._embedder

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
        self.engine.close()
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


class ModelRegistry(Resource):
    def __init__(self, models: list[ServedModel] | None = None) -> None:
        self._models = {m.name: m for m in models or []}

    @classmethod
    def load(
        cls, preloads: list[Preload], config: EngineConfig = EngineConfig(), n_gpu_layers: int | None = None
    ) -> ModelRegistry:
        """``n_gpu_layers`` overrides what each preload's target implies. A preload that does
        not load raises :class:`LoadError`, after freeing the ones loaded before it."""
        registry = cls()
        try:
            for p in preloads:
                log.info("loading %s from %s (target %s)", p.name, p.path, p.target.name)
                try:
                    served = ServedModel.load(p.name, p.path, config, target=p.target, n_gpu_layers=n_gpu_layers)
                except ModelLoadError as e:
                    raise LoadError(p, e.reason) from e
                except (UnservableConfig, ContextError, OSError) as e:
                    raise LoadError(p, str(e)) from e
                except MemoryError:
                    raise LoadError(p, "out of memory") from None
                registry._models[p.name] = served
        except BaseException:
            registry.close()
            raise
        return registry

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def close(self) -> None:
        for m in self._models.values():
            m.close()
        self._models.clear()
