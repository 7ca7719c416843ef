"""llama-host: GGUF models behind the OpenAI API, llama.cpp engine, sandboxed WebAssembly guest."""

__version__ = "0.1.0"

__all__ = ["Llama", "APIError", "__version__"]


def __getattr__(name: str):  # lazy: ``import llama_host`` stays cheap (no llama.cpp, no wasmtime)
    if name == "Llama":
        from llama_host.api import Llama

        return Llama
    if name == "APIError":
        from llama_host.errors import APIError

        return APIError
    raise AttributeError(f"module 'llama_host' has no attribute {name!r}")
