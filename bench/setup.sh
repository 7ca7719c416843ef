#!/usr/bin/env bash
# The baselines for bench/compare.py, built once into the gitignored bench/out/:
#   bench/out/llama.cpp/bin/{llama-server,llama-bench,llama-batched-bench}
#       llama.cpp's own tools, compiled from the same pinned source that build.sh unpacked
#       (.cache/llama-cpp-python-<v>/vendor/llama.cpp), Release, native CPU flags;
#   bench/out/venv-lcp
#       a separate virtual environment with llama-cpp-python's OpenAI server
#       (python -m llama_cpp.server), using the wheel build.sh already compiled, so llama.cpp is
#       not built a second time.
# Idempotent: a second run only checks. Run ./build.sh first.
#
#   bench/setup.sh                      # JOBS=2 by default (cmake --build -j)
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36 # must match build.sh
SRC=.cache/llama-cpp-python-$LLAMA_CPP_PYTHON/vendor/llama.cpp
OUT=bench/out
BUILD=$OUT/llama.cpp
JOBS=${JOBS:-2}
PY=${PYTHON:-python3}

say() { printf '==> %s\n' "$*"; }
die() { printf 'bench/setup.sh: error: %s\n' "$*" >&2; exit 1; }

[ -d "$SRC" ] || die "$SRC is missing: run ./build.sh first (it unpacks the pinned llama.cpp source)"
[ -x .venv/bin/python ] || die ".venv is missing: run ./build.sh first"
mkdir -p "$OUT"

# --- llama.cpp tools -------------------------------------------------------------------------
# The flags build.sh compiled llama-host's llama.cpp with (AMX left out where the CPU or the
# compiler makes it crash), so that both sides run the same kernels.
[ -f .venv/.llama-cflags ] || die ".venv/.llama-cflags is missing: run ./build.sh again"
cflags=$(cat .venv/.llama-cflags)
[ -z "$cflags" ] || say "building llama.cpp's tools as build.sh built llama-host's: $cflags"
# With LLAMA_HOST_BACKEND=cuda (bench/gpu.sh) the tools get CUDA, as build.sh's library does.
backend=${LLAMA_HOST_BACKEND:-cpu}
gpu_args=""
[ "$backend" = cuda ] && gpu_args="-DGGML_CUDA=ON"
[ "$backend" = cpu ] || [ "$backend" = cuda ] || die "LLAMA_HOST_BACKEND=$backend: bench/setup.sh builds cpu or cuda"
[ "$(cat "$BUILD/.backend" 2>/dev/null || echo cpu)" = "$backend" ] || rm -rf "$BUILD"
targets="llama-server llama-bench llama-batched-bench"
missing=0
for t in $targets; do [ -x "$BUILD/bin/$t" ] || missing=1; done
if [ "$missing" = 1 ]; then
  say "building $targets from $SRC (Release, native; several minutes, once)"
  gen=""
  command -v ninja >/dev/null && gen="-G Ninja"
  # LLAMA_CURL is gone from newer llama.cpp (kept for older pins); OpenSSL and the prebuilt web
  # UI are off so the build needs no network and no libssl headers.
  CFLAGS="$cflags" CXXFLAGS="$cflags" cmake -S "$SRC" -B "$BUILD" $gen \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF $gpu_args >"$OUT/cmake-configure.log" 2>&1 ||
    { tail -n 30 "$OUT/cmake-configure.log"; die "cmake configure failed (log: $OUT/cmake-configure.log)"; }
  cmake --build "$BUILD" --config Release --target $targets -j"$JOBS" >"$OUT/cmake-build.log" 2>&1 ||
    { tail -n 30 "$OUT/cmake-build.log"; die "cmake build failed (log: $OUT/cmake-build.log)"; }
fi
for t in $targets; do [ -x "$BUILD/bin/$t" ] || die "$BUILD/bin/$t was not built"; done
echo "$backend" >"$BUILD/.backend"
say "llama.cpp tools: $BUILD/bin ($(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo "source of llama-cpp-python $LLAMA_CPP_PYTHON"))"

# --- llama-cpp-python's server, in its own venv ------------------------------------------------
# The wheel build.sh compiled, found the way build.sh finds it: the cpu key first, then any.
cmake_args="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
[ "$backend" = cuda ] && cmake_args="$cmake_args -DGGML_CUDA=ON"
key="$backend-$(printf '%s|%s|%s|%s' "$LLAMA_CPP_PYTHON" "$cmake_args" "$cflags" "$(uname -m)" | cksum | cut -d' ' -f1)"
WHEELS=${LLAMA_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-host}/wheels
wheel=$(ls "$WHEELS/$key"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl 2>/dev/null | head -n1 || true)
[ -n "$wheel" ] || die "no llama_cpp_python-$LLAMA_CPP_PYTHON wheel under $WHEELS: run ./build.sh first"
VENV=$OUT/venv-lcp
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$(cat "$VENV/.wheel" 2>/dev/null)" != "$wheel" ]; then
  say "creating $VENV with llama-cpp-python's server ($(basename "$wheel"))"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # The prebuilt wheel (no rebuild), its own dependencies, then the [server] extra by name.
  "$VENV/bin/python" -m pip install -q "$wheel"
  "$VENV/bin/python" -m pip install -q uvicorn fastapi pydantic-settings sse-starlette \
    "starlette-context>=0.3.6,<0.4" PyYAML
  echo "$wheel" >"$VENV/.wheel"
fi
"$VENV/bin/python" -c 'import llama_cpp.server.app, llama_cpp; print("==> llama-cpp-python", llama_cpp.__version__, "server importable")'
say "done: run .venv/bin/python bench/compare.py"
