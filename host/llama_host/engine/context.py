"""A llama.cpp context (KV cache + compute) over a model, and the token batch it decodes."""

from __future__ import annotations

import ctypes
import os

from llama_host.engine import lib
from llama_host.engine.model import Model
from llama_host.resource import Resource

C = lib.C


class ContextError(RuntimeError):
    """llama.cpp could not create a context (too many sequences, out of memory, ...)."""


class DecodeError(RuntimeError):
    """``llama_decode`` failed; ``code`` is its return value (1: no KV slot, <0: error)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode failed with {code}")
        self.code = code


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class Batch(Resource):
    """A ``llama_batch`` with room for ``capacity`` tokens, filled with :meth:`add`."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        self.capacity = capacity
        self._b = C.llama_batch_init(capacity, 0, n_seq_max)
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append a token; returns its index in the batch (the ``idx`` to sample its logits)."""
        i = self.n_tokens
        if i >= self.capacity:
            raise OverflowError(f"batch is full ({self.capacity} tokens)")
        b = self._b
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits
        self.n_tokens = b.n_tokens = i + 1
        return i

    def clear(self) -> None:
        self.n_tokens = self._b.n_tokens = 0

    @property
    def raw(self):
        return self._b

    def close(self) -> None:
        if self._b is not None:
            C.llama_batch_free(self._b)
            self._b = None


class Context(Resource):
    """One ``llama_context``: ``n_ctx`` KV cells shared by up to ``n_seq_max`` sequences."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int = 0,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_seq_max: int = 1,
        n_threads: int | None = None,
        embeddings: bool = False,
        flash_attn: bool | None = None,
        pooling: int | None = None,
    ) -> None:
        self.model = model
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx or model.info.n_ctx_train
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch or n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = params.n_threads_batch = n_threads or default_threads()
        params.embeddings = embeddings
        if pooling is not None:
            params.pooling_type = pooling
        params.no_perf = True
        # Stated, not left to llama.cpp's defaults, because prefix reuse depends on both:
        # - swa_full: sliding-window layers (Gemma 2/3, ...) keep every position, not just the
        #   window. A window-sized cache overwrites old positions as a sequence grows, so a kept
        #   prefix would lack the cells its next token attends to (see ``remove``).
        # - kv_unified off: each sequence has its own stream of n_ctx / n_seq_max cells, so its
        #   attention (how many cells it spans, which kernel runs) does not depend on what the
        #   other sequences hold.
        params.swa_full = True
        params.kv_unified = False
        if flash_attn is not None:  # None: llama.cpp decides (on where the backend supports it)
            params.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with lib.errors() as said:
            self._ptr = C.llama_init_from_model(model.ptr, params)
        if not self._ptr:
            raise ContextError(f"llama.cpp cannot create a context: {lib.reason(said, 'out of memory?')}")
        for line in said:  # llama.cpp warns of choices made on purpose ("using full-size SWA cache")
            lib.log.info("%s", line)
        self.n_ctx = C.llama_n_ctx(self._ptr)
        self.n_batch = C.llama_n_batch(self._ptr)
        self.n_seq_max = n_seq_max
        self._memory = C.llama_get_memory(self._ptr)

    @property
    def ptr(self):
        if not self._ptr:
            raise RuntimeError("context is closed")
        return self._ptr

    def decode(self, batch: Batch) -> None:
        rc = C.llama_decode(self.ptr, batch.raw)
        if rc != 0:
            raise DecodeError(rc)

    def clear(self) -> None:
        """Forget every sequence's KV cells."""
        C.llama_memory_clear(self._memory, True)

    def remove(self, seq_id: int, p0: int = 0, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of a sequence (p1 < 0: to the end). False when it cannot be
        cut there: the memory cannot drop part of a sequence (recurrent models), or, cutting the
        tail, what is left does not start at position 0 (a window-sized SWA cache has forgotten
        the start), so it is no prefix to build on; the caller then drops the whole sequence."""
        if not C.llama_memory_seq_rm(self._memory, seq_id, p0, p1):
            return False
        return p1 >= 0 or p0 <= 0 or self.pos_min(seq_id) == 0

    def copy(self, src: int, dst: int) -> None:
        """Make sequence ``dst`` a copy of all of ``src`` (what is past a shared prefix, the
        caller removes). Whole sequences only: llama.cpp copies a sequence between the streams
        of a non-unified cache only whole (and aborts on a part)."""
        C.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def sequence_state(self, seq_id: int) -> bytes:
        """A sequence's KV cells, as llama.cpp serialises them (b"" when it cannot)."""
        size = C.llama_state_seq_get_size(self.ptr, seq_id)
        buf = (ctypes.c_uint8 * size)()
        n = C.llama_state_seq_get_data(self.ptr, buf, size, seq_id)
        return ctypes.string_at(buf, n)  # (one copy; slicing the array built a list of n ints: 0.6 s for 20 MB)

    def set_sequence_state(self, seq_id: int, state: bytes) -> bool:
        """Load what ``sequence_state`` gave into sequence ``seq_id`` (which should be empty).
        From a buffer, not llama.cpp's file API: a short read of a buffer is an exception
        llama.cpp catches, of its files an assertion that aborts. False when it refuses, or
        reads less than all of it (then it was not one sequence's state)."""
        if not state:
            return False
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return C.llama_state_seq_set_data(self.ptr, buf, len(state), seq_id) == len(state)

    def pos_min(self, seq_id: int) -> int:
        """The smallest position the memory holds for a sequence (-1: none)."""
        return C.llama_memory_seq_pos_min(self._memory, seq_id)

    def close(self) -> None:
        if self._ptr:
            C.llama_free(self._ptr)
            self._ptr = None
