"""Deterministic lifetime: everything that owns native memory (a model, a context, an engine)
is freed by ``close()`` or a ``with`` block, never left to the garbage collector."""

from __future__ import annotations

from typing import TypeVar

_R = TypeVar("_R", bound="Resource")


class Resource:
    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
