#!/usr/bin/env bash
# The build stage of Dockerfile and Dockerfile.cuda, run in the repository's copy at /app:
#
#   1. ./build.sh, the repository's one set-up command: .venv, llama.cpp for $LLAMA_HOST_BACKEND
#      (cpu or cuda, set by the Dockerfile), the Zig guest (guest/zig-out/bin/*.wasm);
#   2. .venv without what only the tests and the build use: build.sh installs the test extra and
#      the Zig compiler too (about 1 GB; the server needs a quarter of it);
#   3. $VENDOR (default /opt/llama.cpp): the two files of llama.cpp's source that the server reads
#      at run time (for its demo model without --nn-preload), so the image needs no .cache.
#
# The final stage copies /app/.venv to the same path on the same Python: a virtual environment is
# not relocatable (the #! lines of its scripts, pyvenv.cfg's `home` and the editable install's .pth
# naming /app/host are absolute paths).
#
# SKBUILD_CMAKE_ARGS: llama.cpp's CMake options beyond build.sh's (-DGGML_NATIVE=OFF: see the
# Dockerfile); scikit-build-core adds them to the CMAKE_ARGS that build.sh sets. CUDAARCHS: CMake's
# default for CMAKE_CUDA_ARCHITECTURES. build.sh's wheel cache key knows neither, so the cache folder
# is named after them.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENDOR=${VENDOR:-/opt/llama.cpp}

key=$(printf '%s|%s' "${SKBUILD_CMAKE_ARGS:-}" "${CUDAARCHS:-}" | cksum | cut -d' ' -f1)
export LLAMA_HOST_CACHE="${LLAMA_HOST_CACHE:-$HOME/.cache/llama-host}/image-$key"
export LLAMA_HOST_REAL_MODEL=0 # the 253 MB model build.sh fetches is the tests', not the image's
export PIP_DISABLE_PIP_VERSION_CHECK=1
./build.sh

echo "==> the runtime .venv: build.sh's, less what only the tests and the build use"
.venv/bin/python - <<'PY'
# Keep llama-host and what it needs (its requirements, theirs, ... with their markers and extras
# evaluated; the `test` extra left out); uninstall every other distribution (pytest, playwright,
# the Zig compiler, ...). The venv itself stays, with whatever build.sh put into it beside pip's
# packages (llama.cpp's RPC backend in llama_cpp/lib).
import importlib.metadata as md
import re
import subprocess
import sys

from pip._vendor.packaging.requirements import Requirement


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


installed = {canonical(d.metadata["Name"]): d for d in md.distributions()}
keep, todo = {"pip", "setuptools"}, [("llama-host", frozenset())]
while todo:
    name, extras = todo.pop()
    if name in keep or name not in installed:
        continue
    keep.add(name)
    for text in installed[name].requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
            todo.append((canonical(req.name), frozenset(req.extras)))
drop = sorted(set(installed) - keep)
print("    uninstalling:", " ".join(drop))
if drop:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *drop], check=True)
PY
.venv/bin/python -m pip check
.venv/bin/python -m compileall -q host # (the server's user cannot write __pycache__ in the image)
.venv/bin/llama-host --help >/dev/null # imports everything, loads llama.cpp

echo "==> $VENDOR: what the server reads of llama.cpp's source"
VENDOR=$VENDOR .venv/bin/python - <<'PY'
import os
import shutil
from pathlib import Path

from llama_host import cli, modelgen, vendor

dest = Path(os.environ["VENDOR"])
src = vendor.llama_cpp_source()
for name in ("include/llama.h",  # (vendor.llama_cpp_source() checks that it is there)
             f"models/ggml-vocab-{modelgen.PRESETS[cli.DEMO_PRESET].vocab}.gguf"):
    (dest / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / name, dest / name)
PY
echo "==> done"
