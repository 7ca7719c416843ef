# syntax=docker/dockerfile:1
# llama-host, CPU image (the CUDA one: Dockerfile.cuda; both explained in deploy/README.md).
#
#   docker build -t llama-host .
#   docker run --rm -p 8080:8080 -v "$PWD/models:/models:ro" llama-host \
#     --nn-preload default:GGML:AUTO:/models/x.gguf default auto --socket-addr 0.0.0.0:8080
#
# Models are mounted at /models, never baked in. Without arguments it serves the demo model
# (random weights), which is enough to try the image.
#
# Two stages on ONE base image. The build stage runs the repository's own ./build.sh (a C/C++
# toolchain, cmake and the Zig compiler build llama.cpp and the guest: about 1 GB the server never
# runs); the final stage carries only /app/.venv, the Python sources, the templates and the guest.
# A virtual environment is not relocatable: the #! lines of its scripts, pyvenv.cfg's `home` (the
# folder of the interpreter it was made with) and llama-host's editable install (a .pth naming
# /app/host, which the server needs: it finds templates/ and guest/ beside its sources) are
# absolute paths. So both stages start FROM the same image (its Python at /usr/local/bin in both),
# work in /app in both, and the venv is copied to the very path it was made at.
#
# One Dockerfile per backend rather than a build arg: the CUDA image's bases are NVIDIA's (devel to
# build, runtime to run) with Ubuntu's Python, and its build needs the driver's stub library; this
# one is the official python image. What both do is deploy/docker/build-stage.sh.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# -DGGML_NATIVE=OFF: llama.cpp compiles for the build machine's CPU by default (-march=native), and
# an image runs on other machines (an AVX-512 build dies of SIGILL on a node without it). Off, ggml
# keeps its portable x86-64 set: AVX2, FMA, F16C (CPUs since 2013). "-DGGML_NATIVE=ON" builds for
# this machine only. More options: ;-separated (scikit-build-core's SKBUILD_CMAKE_ARGS).
ARG GGML_CMAKE_ARGS="-DGGML_NATIVE=OFF"
# The caches keep pip's downloads, the llama.cpp wheel and its source between builds (a change to
# the Python sources then rebuilds in a minute, not llama.cpp again).
RUN --mount=type=cache,target=/root/.cache,id=llama-host-build,sharing=locked \
    --mount=type=cache,target=/app/.cache,id=llama-host-src,sharing=locked \
    LLAMA_HOST_BACKEND=cpu SKBUILD_CMAKE_ARGS="$GGML_CMAKE_ARGS" deploy/docker/build-stage.sh

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llama-host" \
      org.opencontainers.image.description="GGUF models behind the OpenAI API (llama.cpp, CPU)"
# libgomp1: llama.cpp's CPU backend uses OpenMP; libstdc++6: it is C++ (the build stage had both
# through build-essential; the slim image promises neither).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/llama --shell /usr/sbin/nologin llama
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/host /app/host
COPY --from=build /app/templates /app/templates
COPY --from=build /app/guest/zig-out/bin/llama-host-guest.wasm /app/guest/zig-out/bin/llama-host-guest.wasm
COPY --from=build /opt/llama.cpp /opt/llama.cpp
# (the server writes only under $HOME/.cache: the compiled guest, the demo model)
ENV PATH=/app/.venv/bin:$PATH \
    LLAMA_HOST_LLAMA_CPP_SRC=/opt/llama.cpp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# /health answers 200 once the models are loaded (the server listens only then): the start period
# covers a slow load. The port: 8080, or LLAMA_HOST_PORT where set (the CLI reads it as --port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLAMA_HOST_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["llama-host"]
