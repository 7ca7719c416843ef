#!/usr/bin/env bash
# The one set-up command: a virtual environment in .venv with llama-host and its pinned
# dependencies, and llama.cpp (through llama-cpp-python, built from source) for the right backend.
# Idempotent; a second run takes seconds: the llama.cpp wheel built for each configuration is kept
# in ~/.cache/llama-host/wheels (LLAMA_HOST_CACHE), so fresh clones reuse it too.
#
#   ./build.sh                          # CUDA if nvcc + an NVIDIA GPU, Metal on macOS, else CPU
#   LLAMA_HOST_BACKEND=cpu ./build.sh   # or cuda | metal | vulkan
#   PYTHON=python3.12 ./build.sh        # the interpreter for .venv (>= 3.10)
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_CPP_PYTHON=0.3.36 # exact: its ctypes declarations match the llama.cpp it vendors
ZIG=0.14.1              # exact: the guest's Zig is written for this compiler (PyPI: ziglang)
CACHE=.cache

say() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites -------------------------------------------------------------------------
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "$PY not found: install Python >= 3.10 (or set PYTHON=...)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "Python >= 3.10 is required, $PY is $("$PY" -V 2>&1)"
"$PY" -c 'import venv, ensurepip' 2>/dev/null ||
  die "$PY cannot create virtual environments: install its venv module (Debian: apt-get install python3-venv)"
for tool in cc c++ cmake; do
  command -v "$tool" >/dev/null ||
    die "'$tool' not found: llama.cpp is compiled from source (Debian: apt-get install build-essential cmake; macOS: xcode-select --install && brew install cmake)"
done

# --- virtual environment -------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" -V 2>&1)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- llama.cpp source: the pinned sdist (tests use its vocab GGUFs and chat templates) --------
SDIST=$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
SRC=$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON
if [ ! -f "$SDIST" ]; then
  say "downloading the llama-cpp-python $LLAMA_CPP_PYTHON source distribution"
  "$VPY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$CACHE/sdist" "llama-cpp-python==$LLAMA_CPP_PYTHON"
fi
if [ ! -d "$SRC" ]; then
  say "unpacking it into $SRC"
  mkdir -p "$SRC.tmp" && tar -xzf "$SDIST" -C "$SRC.tmp" --strip-components=1 && mv "$SRC.tmp" "$SRC"
fi

# --- backend -------------------------------------------------------------------------------
backend=${LLAMA_HOST_BACKEND:-}
if [ -z "$backend" ]; then
  if [ "$(uname -s)" = Darwin ]; then backend=metal
  elif command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then backend=cuda
  else backend=cpu; fi
fi
cmake_args="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
case "$backend" in
  cpu) ;;
  cuda) command -v nvcc >/dev/null || die "LLAMA_HOST_BACKEND=cuda needs nvcc (the CUDA toolkit) on PATH"
        cmake_args="$cmake_args -DGGML_CUDA=ON" ;;
  metal) [ "$(uname -s)" = Darwin ] || die "LLAMA_HOST_BACKEND=metal works on macOS only"
         cmake_args="$cmake_args -DGGML_METAL=ON" ;;
  vulkan) cmake_args="$cmake_args -DGGML_VULKAN=ON" ;;
  *) die "LLAMA_HOST_BACKEND must be cpu, cuda, metal or vulkan, not '$backend'" ;;
esac

# AMX: where the CPU advertises it, -march=native compiles ggml's AMX kernels in. Two ways that
# crashes (SIGILL on the first Q4_0 prompt): the hypervisor does not enable AMX (the CPU probe
# sees it fault), or the compiler miscompiles ggml's tile setup (Debian's GCC 12). So the build
# is decided by what the built library does: after installing it, a child process decodes with it
# (engine/amx.py --library) and where that dies, llama.cpp is rebuilt without AMX.
cflags=$("$PY" host/llama_host/engine/amx.py --cflags)
[ -z "$cflags" ] || say "this CPU advertises AMX but AMX instructions fault: building llama.cpp without AMX"

# --- llama.cpp, built into a wheel kept per configuration -----------------------------------
install_llama() { # $1: CFLAGS/CXXFLAGS
  local key wheels wheel
  key="$backend-$(printf '%s|%s|%s|%s' "$LLAMA_CPP_PYTHON" "$cmake_args" "$1" "$(uname -m)" | cksum | cut -d' ' -f1)"
  wheels=${LLAMA_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-host}/wheels/$key
  wheel=$(ls "$wheels"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    say "building llama.cpp for $backend (llama-cpp-python $LLAMA_CPP_PYTHON${1:+, $1}; several minutes, once)"
    mkdir -p "$wheels"
    rm -rf "$wheels.tmp"
    CMAKE_ARGS="$cmake_args" CFLAGS="$1" CXXFLAGS="$1" \
      CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)} \
      "$VPY" -m pip wheel -q --no-deps -w "$wheels.tmp" "$SDIST"
    mv "$wheels.tmp"/llama_cpp_python-*.whl "$wheels"/ && rmdir "$wheels.tmp"
    wheel=$(ls "$wheels"/llama_cpp_python-*.whl | head -n1)
  fi
  if [ "$(cat .venv/.llama-build 2>/dev/null)" != "$key" ]; then
    say "installing llama.cpp ($backend) into .venv"
    "$VPY" -m pip install -q --force-reinstall --no-deps "$wheel"
    echo "$key" >.venv/.llama-build
  fi
  printf '%s\n' "$1" >.venv/.llama-cflags # (bench/setup.sh builds llama.cpp's own tools the same way)
}
install_llama "$cflags"

# --- llama-host and its pinned dependencies -----------------------------------------------
say "installing llama-host and its dependencies"
"$VPY" -m pip install -q -e ".[test]" -c constraints.txt

# --- does the built llama.cpp run here? -----------------------------------------------------
if ! state=$("$VPY" host/llama_host/engine/amx.py --library); then
  [ "$state" = faulting ] || die "the built llama.cpp cannot be probed (see above)"
  [ -z "$cflags" ] || die "llama.cpp built without AMX still crashes on this machine"
  say "llama.cpp's AMX code crashes on this machine (the CPU or the compiler): rebuilding without AMX"
  cflags=$("$PY" host/llama_host/engine/amx.py --cflags-no-amx)
  install_llama "$cflags"
  state=$("$VPY" host/llama_host/engine/amx.py --library) || die "llama.cpp built without AMX still crashes on this machine"
fi
say "llama.cpp runs here (probe: $state)"

# --- llama.cpp's RPC backend (--rpc, llama-host rpc-server), from the same source ------------
# A backend library of its own beside libggml, loaded only when asked for, so the wheel above is
# built as llama-cpp-python builds it. Rebuilt whenever that library changes.
lib=$("$VPY" -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / "lib")')
rpc_lib="$lib/libggml-rpc$([ "$(uname -s)" = Darwin ] && echo .dylib || echo .so)"
if [ ! -f "$rpc_lib" ] || [ "$(cat "$lib/.rpc-build" 2>/dev/null)" != "$(cat .venv/.llama-build)" ]; then
  say "building llama.cpp's RPC backend ($rpc_lib)"
  ggml=$SRC/vendor/llama.cpp/ggml
  rpath='$ORIGIN'; [ "$(uname -s)" = Darwin ] && rpath=@loader_path
  # shellcheck disable=SC2086 # (cflags: several flags)
  c++ -O3 -std=c++17 -fPIC -shared $cflags -DNDEBUG -DGGML_BACKEND_DL -DGGML_BACKEND_SHARED -DGGML_BACKEND_BUILD \
      -DGGML_SHARED -DGGML_BUILD -I"$ggml/include" -I"$ggml/src" "$ggml/src/ggml-rpc/ggml-rpc.cpp" \
      "$ggml/src/ggml-rpc/transport.cpp" -L"$lib" -lggml-base -lggml -Wl,-rpath,"$rpath" -o "$rpc_lib.tmp" -lpthread \
    && mv "$rpc_lib.tmp" "$rpc_lib" && cat .venv/.llama-build >"$lib/.rpc-build" \
    || say "warning: the RPC backend did not build: --rpc and llama-host rpc-server will say so"
fi

# --- a real model for the tests: Gemma 3 270M Q4_K_M from PyPI (tests/realmodel.py; 253 MB, once) --
"$VPY" tests/realmodel.py >/dev/null

# --- the guest: Zig → wasm32-wasi, ReleaseSafe ----------------------------------------------
"$VPY" -m pip install -q "ziglang==$ZIG"
say "building the guest (guest/ → guest/zig-out/bin/llama-host-guest.wasm)"
(cd guest && ../"$VPY" -m ziglang build --summary none) || die "the guest did not build (see the Zig errors above)"

say "done: backend $backend; run tests with: .venv/bin/python -m pytest"
