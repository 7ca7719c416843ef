"""A slot's saved KV state on disk (llama-server's /slots save and restore): the tokens it holds
and llama.cpp's serialised cells, followed by a SHA-256 of both, so that restore hands llama.cpp
only bytes this server wrote (llama.cpp trusts what it reads: changed cells could hold any
positions)."""

from __future__ import annotations

import hashlib
import os
import struct

from llama_host.errors import SlotStateError

MAGIC = b"LHSLOT\x00\x01"  # llama-host slot file, version 1
_HEAD = struct.Struct("<8sIQ")  # magic, token count, state bytes
_DIGEST = 32


def write(path: str, tokens: list[int], state: bytes) -> int:
    """Write the file (through a temporary name: a failed write leaves no file); its size."""
    body = _HEAD.pack(MAGIC, len(tokens), len(state)) + struct.pack(f"<{len(tokens)}i", *tokens) + state
    data = body + hashlib.sha256(body).digest()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(data)


def read(path: str, max_bytes: int) -> tuple[list[int], bytes, int]:
    """The tokens, the state and the file's size; SlotStateError unless it is intact and ours."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise SlotStateError(f"{name!r} is {size} bytes, more than a slot of this context can hold")
    with open(path, "rb") as f:
        data = f.read()
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if len(data) < _HEAD.size + _DIGEST or hashlib.sha256(body).digest() != digest:
        raise SlotStateError(f"{name!r} is not a slot file this server saved, or it has changed since")
    magic, n_tokens, n_state = _HEAD.unpack_from(body)
    if magic != MAGIC or _HEAD.size + 4 * n_tokens + n_state != len(body):
        raise SlotStateError(f"{name!r} is not a slot file of this llama-host version")
    tokens = list(struct.unpack_from(f"<{n_tokens}i", body, _HEAD.size))
    return tokens, body[_HEAD.size + 4 * n_tokens:], size
