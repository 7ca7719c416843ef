"""GGUF files llama.cpp cannot load, made from a good one's bytes: for the tests that every such
file is a clear error and never takes the server down."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGUFReader


def damaged(data: bytes, kind: str) -> bytes:
    """GGUF v3: magic, version u32, n_tensors u64, n_kv u64, then key/value pairs, each key a
    u64 length + bytes."""
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "2**40 tensors":
        return data[:8] + struct.pack("<Q", 1 << 40) + data[16:]
    if kind == "2**60-byte string":
        return data[:24] + struct.pack("<Q", 1 << 60) + data[32:]
    if kind == "0 layers":  # (llama.cpp asserts, which aborts the process)
        return zero_layers(data)
    raise AssertionError(kind)


def infinite_layers(data: bytes) -> bytes:
    """A llama GGUF whose ``llama.block_count`` is a float, and infinite: no count at all."""
    data = bytearray(data)
    at = data.index(b"llama.block_count") + len(b"llama.block_count")
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF_TYPE_UINT32 -> GGUF_TYPE_FLOAT32
    struct.pack_into("<If", data, at, 6, float("inf"))
    return bytes(data)


def zero_layers(data: bytes) -> bytes:
    """A llama GGUF whose ``llama.block_count`` (a u32 after its key) says 0: a failed GGML_ASSERT
    in llama.cpp's loader, not an error it returns."""
    data = bytearray(data)
    at = data.index(b"llama.block_count") + len(b"llama.block_count")
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF_TYPE_UINT32
    struct.pack_into("<I", data, at + 4, 0)
    return bytes(data)


def nan_weights(path: Path, tensor: str = "output_norm.weight") -> bytes:
    """A model whose ``tensor`` (an f32 one) is all NaN: it loads and runs, and every number it
    computes after that tensor is NaN (as broken weights or a broken kernel make them)."""
    t = next(t for t in GGUFReader(str(path)).tensors if t.name == tensor)
    data = bytearray(path.read_bytes())
    data[t.data_offset:t.data_offset + t.n_bytes] = np.full(t.n_bytes // 4, np.nan, dtype="<f4").tobytes()
    return bytes(data)
