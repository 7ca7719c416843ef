"""Tiny test guests, written as WAT by a small builder and assembled with wasmtime's wat2wasm.

A :class:`Program` is a straight sequence of WASI-NN (or llama_host_v1) calls with constant or
memory-loaded arguments; the errno of each call is recorded, and at the end the guest emits, via
``llama_host_v1.emit``, the errnos and then whatever it was asked to report (streamed token
texts are emitted as they come, before those). ``Program.parse`` splits that up again.
"""

from __future__ import annotations

import struct

import wasmtime

NN_SIGNATURES = {
    "load": 5, "load_by_name": 3, "load_by_name_with_config": 5, "init_execution_context": 2,
    "set_input": 3, "compute": 1, "compute_single": 1, "fini_single": 1, "get_output": 5,
    "get_output_single": 5, "unload": 1, "finalize_execution_context": 1,
}
EXT_SIGNATURES = {"abi_version": 0, "model_info": 4, "request_size": 0, "request_read": 3, "emit": 2}


def load(addr: int) -> str:
    """An argument read from guest memory at run time (e.g. a graph id written by the host)."""
    return f"(i32.load (i32.const {addr}))"


class Program:
    def __init__(self, pages: int = 4) -> None:
        self.pages = pages
        self._data: list[tuple[int, bytes]] = []
        self._next = 1024
        self._body: list[str] = []
        self._errnos: list[int] = []  # addresses where each call's errno is kept
        self._reports: list[tuple[str, str]] = []  # (addr expr, len expr) emitted at the end

    # --- memory -------------------------------------------------------------------------------

    def alloc(self, size: int) -> int:
        addr = self._next
        self._next += (size + 7) // 8 * 8
        return addr

    def data(self, content: bytes) -> int:
        addr = self.alloc(max(len(content), 1))
        self._data.append((addr, content))
        return addr

    def slot(self) -> int:
        return self.alloc(4)

    def tensor(self, data: bytes, *, dims=(1,), data_ptr: int | None = None, data_len: int | None = None) -> int:
        data_addr = self.data(data) if data_ptr is None else data_ptr
        dims_addr = self.data(struct.pack(f"<{len(dims)}I", *dims))
        length = len(data) if data_len is None else data_len
        return self.data(struct.pack("<5I", dims_addr, len(dims), 1, data_addr, length))

    # --- code ---------------------------------------------------------------------------------

    def call(self, name: str, *args: int | str) -> int:
        """Call an import; returns the index of its errno in the report."""
        module = "wasi_ephemeral_nn" if name in NN_SIGNATURES else "llama_host_v1"
        rc = self.slot()
        operands = " ".join(a if isinstance(a, str) else f"(i32.const {a & 0xFFFFFFFF})" for a in args)
        self._body.append(f"(i32.store (i32.const {rc}) (call ${module}.{name} {operands}))")
        self._errnos.append(rc)
        return len(self._errnos) - 1

    def report(self, addr: int, length: int | str) -> None:
        """Emit ``length`` bytes at ``addr`` at the end (after the errnos)."""
        self._reports.append((f"(i32.const {addr})", length if isinstance(length, str) else f"(i32.const {length})"))

    def stream(self, ctx: str, buf: int, size: int) -> None:
        """compute_single until it fails; emit each token's text; record the final errno."""
        written, rc = self.slot(), self.slot()
        self._body.append(
            f"""(block $done (loop $next
              (i32.store (i32.const {rc}) (call $wasi_ephemeral_nn.compute_single {ctx}))
              (br_if $done (i32.ne (i32.load (i32.const {rc})) (i32.const 0)))
              (drop (call $wasi_ephemeral_nn.get_output_single {ctx} (i32.const 0) (i32.const {buf})
                                                              (i32.const {size}) (i32.const {written})))
              (drop (call $llama_host_v1.emit (i32.const {buf}) (i32.load (i32.const {written}))))
              (br $next)))"""
        )
        self._errnos.append(rc)

    def raw(self, wat: str) -> None:
        self._body.append(wat)

    def parse(self, emitted: list[bytes]) -> tuple[list[int], list[bytes], list[bytes]]:
        """From what the guest emitted: the errnos, the streamed pieces, the reports."""
        n = len(self._reports)
        head, errnos, reports = emitted[: -1 - n], emitted[-1 - n], emitted[len(emitted) - n :]
        return list(struct.unpack(f"<{len(errnos) // 4}i", errnos)), head, reports

    def build(self) -> bytes:
        imports = []
        for module, sigs in (("wasi_ephemeral_nn", NN_SIGNATURES), ("llama_host_v1", EXT_SIGNATURES)):
            for name, n in sigs.items():
                params = " ".join(["i32"] * n)
                imports.append(f'(import "{module}" "{name}" (func ${module}.{name} (param {params}) (result i32)))')
        errnos = self.alloc(4 * max(len(self._errnos), 1))
        copy = [f"(i32.store (i32.const {errnos + 4 * i}) (i32.load (i32.const {a})))" for i, a in enumerate(self._errnos)]
        emits = [f"(drop (call $llama_host_v1.emit (i32.const {errnos}) (i32.const {4 * len(self._errnos)})))"]
        emits += [f"(drop (call $llama_host_v1.emit {a} {n}))" for a, n in self._reports]
        data = "\n".join(f'(data (i32.const {a}) "{_escape(c)}")' for a, c in self._data)
        wat = f"""(module
          {chr(10).join(imports)}
          (memory (export "memory") {self.pages})
          {data}
          (func (export "_start")
            {chr(10).join(self._body)}
            {chr(10).join(copy)}
            {chr(10).join(emits)}))"""
        return wasmtime.wat2wasm(wat)


def _escape(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)
