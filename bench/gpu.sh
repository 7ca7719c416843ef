#!/usr/bin/env bash
# GPU numbers in one command, on a machine with an NVIDIA GPU and the CUDA toolkit (nvcc):
#   1. ./build.sh with CUDA (llama-host's llama.cpp with GGML_CUDA=ON)
#   2. the suite's GPU tests (pytest -m gpu: offload, answers, concurrent streams on the device)
#   3. bench/setup.sh with CUDA (llama.cpp's own llama-server, llama-bench, llama-batched-bench)
#   4. bench/compare.py --gpu: every scenario against llama-server with every layer offloaded,
#      1 to 64 streams; it writes the "<preset>-gpu" section of bench/RESULTS.md
# Everything it builds stays in .venv, ~/.cache/llama-host and bench/out, as for the CPU runs.
#
#   bench/gpu.sh [--preset bench] [--repeats 3] ...   (extra arguments go to compare.py)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*"; }
die() { printf 'bench/gpu.sh: error: %s\n' "$*" >&2; exit 1; }

command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || die "no NVIDIA GPU here (nvidia-smi -L fails)"
command -v nvcc >/dev/null || die "nvcc is not on PATH: install the CUDA toolkit (or add /usr/local/cuda/bin to PATH)"
nvidia-smi -L

say "build.sh with CUDA"
LLAMA_HOST_BACKEND=cuda ./build.sh
say "the GPU tests"
.venv/bin/python -m pytest -m gpu -q -rs tests/test_gpu.py
say "llama.cpp's tools with CUDA"
LLAMA_HOST_BACKEND=cuda bench/setup.sh
say "llama-host against llama-server on the GPU"
.venv/bin/python bench/compare.py --gpu --no-lcp "$@"
