"""The WASI-NN ABI of WasmEdge's GGML plugin: numbers, layouts, and the metadata keys.

All of it is the contract with guests; see DESIGN.md ("The WASI-NN ABI") and guest/ABI.md.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
from typing import Any


class Errno(enum.IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8
    # WasmEdge extensions
    END_OF_SEQUENCE = 100
    CONTEXT_FULL = 101
    PROMPT_TOO_LONG = 102
    MODEL_NOT_FOUND = 103


class NnError(Exception):
    """Raised inside a host function; the guest receives ``errno``."""

    def __init__(self, errno: Errno, message: str = "") -> None:
        super().__init__(message or errno.name)
        self.errno = errno


ENCODING_GGML = 6
TENSOR_STRUCT = struct.Struct("<5I")  # dims_ptr, dims_len, type, data_ptr, data_len
BUILDER_STRUCT = struct.Struct("<2I")  # ptr, len
INPUT_PROMPT, INPUT_METADATA = 0, 1
TENSOR_U8, TENSOR_I32 = 3, 4  # a prompt as bytes of text, or as token ids (llama-host)
OUTPUT_TEXT, OUTPUT_METADATA = 0, 1
OUTPUT_LOGPROBS, OUTPUT_PROMPT_LOGPROBS = 2, 3  # llama-host: with the `logprobs` metadata key
OUTPUT_TOKENS = 4  # llama-host: the generated token ids, with the `return-tokens` metadata key

# --- metadata (set_input index 1, load_by_name_with_config) ---------------------------------

_INT, _FLOAT, _BOOL, _STR = "int", "float", "bool", "str"

# WasmEdge GGML plugin keys, with their types. The last group configures the model or the
# context in WasmEdge; here the model is preloaded with the server's settings, so they are
# checked and accepted but do not change a running model.
METADATA_KEYS: dict[str, str] = {
    "enable-log": _BOOL,
    "enable-debug-log": _BOOL,
    "stream-stdout": _BOOL,
    "embedding": _BOOL,
    "n-predict": _INT,
    "reverse-prompt": _STR,
    "temp": _FLOAT,
    "top-p": _FLOAT,
    "top-k": _INT,
    "min-p": _FLOAT,
    "typical-p": _FLOAT,
    "top-n-sigma": _FLOAT,
    "dynatemp-range": _FLOAT,
    "dynatemp-exponent": _FLOAT,
    "xtc-probability": _FLOAT,
    "xtc-threshold": _FLOAT,
    "mirostat": _INT,
    "mirostat-tau": _FLOAT,
    "mirostat-eta": _FLOAT,
    "dry-multiplier": _FLOAT,
    "dry-base": _FLOAT,
    "dry-allowed-length": _INT,
    "dry-penalty-last-n": _INT,
    "dry-sequence-breakers": "list[str]",
    "repeat-penalty": _FLOAT,
    "repeat-last-n": _INT,
    "presence-penalty": _FLOAT,
    "frequency-penalty": _FLOAT,
    "seed": _INT,
    "grammar": _STR,
    "json-schema": _STR,
    "ignore-eos": _BOOL,
    # llama-host extensions
    "stop": "list[str]",
    "logit-bias": "dict[int,float]",
    "logprobs": _INT,
    "grammar-schemas": "dict[str,object]",
    "grammar-triggers": "list[str]",
    "prompt-logprobs": _BOOL,
    "return-tokens": _BOOL,
    "id-slot": _INT,
    # accepted, fixed by the preload
    "ctx-size": _INT,
    "batch-size": _INT,
    "ubatch-size": _INT,
    "threads": _INT,
    "n-gpu-layers": _INT,
    "main-gpu": _INT,
    "use-mmap": _BOOL,
    "split-mode": _STR,
    "tensor-split": _STR,
    "mmproj": _STR,
    "image": _STR,
}


def _check(key: str, kind: str, value: Any) -> Any:
    ok: bool
    if kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == _FLOAT:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == _STR:
        ok = isinstance(value, str)
    elif kind == "list[str]":
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == "dict[str,object]":
        ok = isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())
    else:  # dict[int,float]: {"15043": -100} or [[15043, -100], ...]
        pairs = value.items() if isinstance(value, dict) else value if isinstance(value, list) else None
        try:
            value = {int(t): float(b) for t, b in pairs}
            ok = True
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise NnError(Errno.INVALID_ARGUMENT, f"metadata {key!r} must be {kind}, not {value!r}")
    return value


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """Known keys, type-checked; unknown keys are ignored (as WasmEdge does)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise NnError(Errno.INVALID_ARGUMENT, f"metadata is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise NnError(Errno.INVALID_ARGUMENT, "metadata must be a JSON object")
    return {k: _check(k, METADATA_KEYS[k], v) for k, v in data.items() if k in METADATA_KEYS}


@dataclasses.dataclass(frozen=True)
class Tensor:
    dims: tuple[int, ...]
    type: int
    data: bytes
