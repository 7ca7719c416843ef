"""The WASI-NN bridge: host functions for guests (wasi_ephemeral_nn, llama_host_v1) and the
runner that executes guests under wasmtime."""
