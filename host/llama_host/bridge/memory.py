"""Checked access to a guest's linear memory from inside a host call."""

from __future__ import annotations

import ctypes
import struct

import wasmtime

from llama_host.bridge.abi import Errno, NnError

_U32 = struct.Struct("<I")


class GuestMemory:
    """The exported ``memory`` of a guest instance. Pointers and lengths arrive as signed i32
    and are read as the u32 they are; every range is checked against the memory's size (Python
    integers cannot overflow, so ``ptr + len`` past 4 GiB is just out of range).

    Taken from the instance's exports when it is created. The engine is configured so that memories
    never move (``memory_may_move = False``), so the base address is read once; the size only
    grows, so it is read again only when a range seems out of bounds. Accesses then go straight
    through ctypes: a streamed token costs several host calls, and each microsecond counts."""

    def __init__(self, memory: wasmtime.Memory, store: wasmtime.Store) -> None:
        self._store = store
        self._memory = memory
        self._base = ctypes.cast(memory.data_ptr(store), ctypes.c_void_p).value or 0
        self._size = memory.data_len(store)

    @staticmethod
    def u32(value: int) -> int:
        return value & 0xFFFFFFFF

    def check(self, ptr: int, length: int) -> tuple[int, int]:
        ptr, length = self.u32(ptr), self.u32(length)
        if ptr + length > self._size and ptr + length > (size := self._memory.data_len(self._store)):
            raise NnError(Errno.INVALID_ARGUMENT, f"guest range [{ptr}, {ptr + length}) is outside its memory")
        if ptr + length > self._size:
            self._size = size  # the guest grew its memory
        return ptr, length

    def read(self, ptr: int, length: int) -> bytes:
        ptr, length = self.check(ptr, length)
        return ctypes.string_at(self._base + ptr, length)

    def read_str(self, ptr: int, length: int) -> str:
        try:
            return self.read(ptr, length).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NnError(Errno.INVALID_ARGUMENT, "a name is not UTF-8") from e

    def write(self, ptr: int, data: bytes) -> None:
        ptr, _ = self.check(ptr, len(data))
        ctypes.memmove(self._base + ptr, data, len(data))

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, _U32.pack(value))

    def write_output(self, buf: int, buf_max: int, written: int, data: bytes) -> Errno:
        """Copy ``data`` into a guest buffer of ``buf_max`` bytes and its size to ``written``;
        when it does not fit: TooLarge, with the size needed written."""
        self.check(written, 4)
        self.check(buf, buf_max)
        if len(data) > self.u32(buf_max):
            self.write_u32(written, len(data))
            return Errno.TOO_LARGE
        self.write(buf, data)
        self.write_u32(written, len(data))
        return Errno.SUCCESS
