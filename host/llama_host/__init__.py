"""llama-host: GGUF models behind the OpenAI API, llama.cpp engine, sandboxed WebAssembly guest."""

__version__ = "0.1.0"
