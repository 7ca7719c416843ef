"""The pinned llama.cpp source that build.sh unpacks from llama-cpp-python's sdist.

Tests and benchmarks read real data from it (vocab-only GGUFs, chat templates, later the baseline
tools); nothing of it is committed. ``LLAMA_HOST_LLAMA_CPP_SRC`` points elsewhere if needed.
"""

from __future__ import annotations

import os
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # keep in step with build.sh and pyproject.toml

REPO_ROOT = Path(__file__).resolve().parents[2]


class VendorSourceMissing(FileNotFoundError):
    """The llama.cpp source is not where build.sh puts it."""


def llama_cpp_source() -> Path:
    env = os.environ.get("LLAMA_HOST_LLAMA_CPP_SRC")
    root = (
        Path(env)
        if env
        else REPO_ROOT / ".cache" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    )
    if not (root / "include" / "llama.h").is_file():
        raise VendorSourceMissing(
            f"llama.cpp source not found at {root}: run ./build.sh (or set LLAMA_HOST_LLAMA_CPP_SRC)"
        )
    return root


def vocab_gguf(name: str) -> Path:
    """A vocab-only GGUF shipped with llama.cpp, e.g. ``llama-spm`` or ``llama-bpe``."""
    path = llama_cpp_source() / "models" / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        raise VendorSourceMissing(f"no vocabulary {name!r} in the llama.cpp source ({path})")
    return path


def chat_templates_dir() -> Path:
    return llama_cpp_source() / "models" / "templates"


def guest_wasm() -> Path:
    """The guest module build.sh compiles (guest/, Zig)."""
    return REPO_ROOT / "guest" / "zig-out" / "bin" / "llama-host-guest.wasm"


def templates_dir() -> Path:
    """The named prompt templates (templates/<name>.jinja)."""
    return REPO_ROOT / "templates"
