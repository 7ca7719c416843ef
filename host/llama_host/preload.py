"""``--nn-preload NAME:ENCODING:TARGET:PATH``, WasmEdge's syntax, checked strictly.

Encoding and target are case-insensitive; the encoding must be GGML; the target is CPU (no
offload), GPU (offload all layers) or AUTO (all, if a GPU backend is present). The path is
everything after the third colon, so it may itself contain ``:``. Unlike WasmEdge, which skips a
bad entry silently, every problem is a :class:`PreloadError` that names the entry and says what
is accepted. A path ``hf://user/repo[@revision]/file.gguf`` is a file on the Hugging Face hub,
downloaded into its cache (or found there) by :mod:`llama_host.hub`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

from llama_host.engine.model import Target

GGUF_MAGIC = b"GGUF"
ENCODINGS = ("GGML",)
TARGETS = {t.name: t for t in (Target.CPU, Target.GPU, Target.AUTO)}
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
FORMAT = "NAME:ENCODING:TARGET:PATH, e.g. default:GGML:AUTO:model.gguf"


class PreloadError(ValueError):
    """A ``--nn-preload`` entry that cannot be served."""

    def __init__(self, entry: str, problem: str) -> None:
        super().__init__(f"--nn-preload {entry!r}: {problem}")
        self.entry = entry
        self.problem = problem


class PreloadFetchError(PreloadError):
    """An ``hf://`` model that cannot be downloaded: a failure to start, not a usage error."""


@dataclasses.dataclass(frozen=True)
class Preload:
    name: str
    encoding: str  # always "GGML"
    target: Target
    path: Path


def parse_preload(entry: str) -> Preload:
    parts = entry.split(":", 3)
    if len(parts) != 4:
        raise PreloadError(entry, f"expected {FORMAT}")
    name, encoding, target, path = parts
    if not _NAME.fullmatch(name):
        raise PreloadError(entry, f"the name {name!r} must be non-empty letters, digits, '_', '-' or '.'")
    if encoding.upper() not in ENCODINGS:
        raise PreloadError(entry, f"unknown encoding {encoding!r}; accepted: {', '.join(ENCODINGS)}")
    if target.upper() not in TARGETS:
        raise PreloadError(
            entry, f"unknown target {target!r}; accepted: {', '.join(TARGETS)} (case-insensitive)"
        )
    if not path:
        raise PreloadError(entry, "the model path is empty")
    file = _from_hub(entry, path) if path.startswith("hf://") else Path(path).expanduser()
    if not file.exists():
        raise PreloadError(entry, f"model file not found: {file}")
    if not file.is_file():
        raise PreloadError(entry, f"not a regular file: {file}")
    try:
        with file.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise PreloadError(entry, f"cannot read {file}: {e.strerror}") from e
    if magic != GGUF_MAGIC:
        raise PreloadError(entry, f"{file} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    return Preload(name=name, encoding=encoding.upper(), target=TARGETS[target.upper()], path=file)


def _from_hub(entry: str, uri: str) -> Path:
    from llama_host import hub  # (here: importing huggingface_hub takes a while, and most paths are local)

    try:
        spec = hub.parse_uri(uri)
    except hub.SpecError as e:
        raise PreloadError(entry, str(e)) from None
    try:
        return hub.resolve(spec)
    except hub.HubError as e:
        raise PreloadFetchError(entry, str(e)) from None


def parse_preloads(entries: Iterable[str]) -> list[Preload]:
    """Parse every entry; a name may be preloaded once."""
    preloads: list[Preload] = []
    seen: dict[str, str] = {}
    for entry in entries:
        preload = parse_preload(entry)
        if preload.name in seen:
            raise PreloadError(entry, f"the name {preload.name!r} is already preloaded by {seen[preload.name]!r}")
        seen[preload.name] = entry
        preloads.append(preload)
    return preloads
