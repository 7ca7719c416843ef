"""``--models-dir``: each GGUF file of a folder is a model the registry loads on demand.

Not recursive. A split model (``name-00001-of-00003.gguf``) is one model, named without the
suffix and loaded from its first part (llama.cpp finds the others beside it).
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import re
import struct
from pathlib import Path

from llama_host.engine.model import Target

log = logging.getLogger(__name__)

SPLIT = re.compile(r"(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf", re.IGNORECASE)
GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model loaded on demand, under ``name`` (its public id), from ``path``."""

    name: str
    path: Path
    target: Target = Target.AUTO  # all layers offloaded where a GPU backend is present


def scan(folder: Path) -> list[ModelFile]:
    """The models of ``folder``, by name. Files that are not ``.gguf`` are skipped with a log
    line; a ``.gguf`` file that is not GGUF inside is still listed (its load fails, with why)."""
    found: dict[str, ModelFile] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix.lower() != ".gguf":
            log.info("--models-dir: skipping %s (not a .gguf file)", path.name)
            continue
        split = SPLIT.fullmatch(path.name)
        if split is not None and int(split["part"]) != 1:
            continue  # loaded with its first part
        name = split["stem"] if split is not None else path.stem
        if not _servable_name(name):
            log.warning("--models-dir: skipping %r: a model id must be printable UTF-8 (rename the file)", path.name)
            continue
        if not _has_magic(path):
            log.warning("--models-dir: %s is not a GGUF file; requests for '%s' will fail", path.name, name)
        if name in found:
            log.warning("--models-dir: %s and %s are both named '%s'; serving the first", found[name].path.name,
                        path.name, name)
            continue
        found[name] = ModelFile(name, path)
    return list(found.values())


def _servable_name(name: str) -> bool:
    """A file name clients can send back as a model id: valid UTF-8 (Python keeps other bytes as
    lone surrogates, which no JSON answer can carry) without control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return name.isprintable()


def file_bytes(path: Path) -> int:
    """The size of a model's file, or of all the parts of a split model."""
    split = SPLIT.fullmatch(path.name)
    if split is None:
        return path.stat().st_size
    parts = (path.with_name(f"{split['stem']}-{i:05d}-of-{split['count']}.gguf") for i in range(1, int(split["count"]) + 1))
    return sum(p.stat().st_size for p in parts if p.is_file())


# --- memory estimate ---------------------------------------------------------------------------


def estimate_bytes(path: Path, n_cells: int) -> int:
    """Memory a model takes served with ``n_cells`` KV cells (context × sequences): its file (the
    weights) and an f16 KV cache in every layer, read from the GGUF header without loading the
    model. An upper bound as ``Model.kv_bytes_per_token`` is (sliding-window layers take less).
    Raises ValueError for a file that is not a GGUF model."""
    meta = read_metadata(path)
    try:
        arch = meta["general.architecture"]
        n_layer, n_embd = _count(meta[f"{arch}.block_count"]), _count(meta[f"{arch}.embedding_length"])
        n_head = _most(meta.get(f"{arch}.attention.head_count")) or 1
        n_head_kv = _most(meta.get(f"{arch}.attention.head_count_kv")) or n_head
        head_k = _most(meta.get(f"{arch}.attention.key_length")) or n_embd // n_head
        head_v = _most(meta.get(f"{arch}.attention.value_length")) or head_k
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # (a float header value may be NaN or infinite)
        raise ValueError(f"{path.name} has no usable model header ({type(e).__name__}: {e})") from None
    return file_bytes(path) + n_layer * n_head_kv * (head_k + head_v) * 2 * n_cells


def _count(value: object) -> int:
    """A hyperparameter that counts something: a whole number from 0."""
    n = int(value)  # type: ignore[call-overload]
    if n < 0:
        raise ValueError(f"{value} is negative")
    return n


def _most(value: object) -> int:
    """A hyperparameter given per layer (an array) or for all: its largest value (0 if absent)."""
    if isinstance(value, list):
        return _count(max(value, default=0))
    return _count(value) if isinstance(value, (int, float)) else 0


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUF value types
_STRING, _ARRAY = 8, 9
_MAX_NUMBERS = 4096  # a numeric array read (per-layer values); longer ones are skipped


def read_metadata(path: Path) -> dict[str, object]:
    """The key-value header of a GGUF file (version 2 or 3): numbers, strings, numeric arrays;
    arrays of strings (the vocabulary) are skipped (None). Raises ValueError where it is no GGUF."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _Header(data).read()
    except (OSError, struct.error, UnicodeDecodeError) as e:  # (an empty file cannot be mapped: ValueError)
        raise ValueError(f"{path.name} is not a readable GGUF file ({e})") from None


class _Header:
    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.at = data, 0

    def read(self) -> dict[str, object]:
        if self.data[:4] != GGUF_MAGIC:
            raise ValueError("the file does not start with GGUF")
        self.at = 4
        version, _n_tensors, n_kv = self.take("I"), self.take("Q"), self.take("Q")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        meta = {}
        for _ in range(n_kv):
            key = self.string().decode("utf-8")
            meta[key] = self.value(self.take("I"))
        return meta

    def take(self, fmt: str) -> int | float | bool:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value

    def string(self) -> bytes:
        n = self.take("Q")
        if self.at + n > len(self.data):
            raise ValueError("the header is cut short")
        self.at += n
        return self.data[self.at - n : self.at]

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string().decode("utf-8", "replace")
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self.take("I"), self.take("Q")
        if item == _STRING:
            for _ in range(count):
                self.at += 8 + struct.unpack_from("<Q", self.data, self.at)[0]
            return None
        if item not in _SCALARS:
            raise ValueError(f"unsupported GGUF array of type {item}")
        fmt = f"<{count}{_SCALARS[item]}"
        size = struct.calcsize(_SCALARS[item]) * count
        if self.at + size > len(self.data):
            raise ValueError("the header is cut short")
        values = list(struct.unpack_from(fmt, self.data, self.at)) if count <= _MAX_NUMBERS else None
        self.at += size
        return values


def _has_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False
