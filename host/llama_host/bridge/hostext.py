"""``llama_host_v1``: what llama-host gives a guest beyond WASI-NN (guest/ABI.md).

The version is part of the module name: a guest built against another version fails to link,
with a message naming the module, instead of calling functions whose meaning changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from llama_host.bridge.abi import Errno, NnError
from llama_host.bridge.memory import GuestMemory
from llama_host.bridge.wasi_nn import NnSession

MODULE = "llama_host_v1"
ABI_VERSION = 1


class HostExt:
    """Per-instance: the request the guest is to answer, where its response goes, and model
    metadata for the graphs of its WASI-NN session."""

    def __init__(self, nn: NnSession, request: bytes = b"", on_emit: Callable[[bytes], bool | None] | None = None) -> None:
        self.nn = nn
        self.request = request
        self.on_emit = on_emit
        self.emitted: list[bytes] = []  # kept when no callback is given
        self.error_message = ""  # the message of the last import that failed

    def abi_version(self, mem: GuestMemory) -> int:
        return ABI_VERSION

    def model_info(self, mem: GuestMemory, graph_id: int, buf: int, buf_max: int, written: int) -> Errno:
        graph = self.nn.graphs.get(graph_id)
        if graph is None:
            raise NnError(Errno.INVALID_ARGUMENT, f"no graph {graph_id}")
        served = graph.served
        info = served.model.info
        data = json.dumps(
            {
                "name": served.name,
                "model_name": info.name,
                "architecture": info.architecture,
                "description": info.description,
                "chat_template": info.chat_template,
                "chat_template_tool_use": info.tool_use_template,
                "bos_token": info.bos_token,
                "eos_token": info.eos_token,
                "n_ctx": served.engine.n_ctx_seq,
                "n_parallel": served.engine.config.parallel,
                "n_ctx_train": info.n_ctx_train,
                "n_vocab": info.n_vocab,
                "n_embd": info.n_embd,
            }
        ).encode()
        return mem.write_output(buf, buf_max, written, data)

    def request_size(self, mem: GuestMemory) -> int:
        return len(self.request)

    def request_read(self, mem: GuestMemory, buf: int, buf_max: int, written: int) -> Errno:
        return mem.write_output(buf, buf_max, written, self.request)

    def emit(self, mem: GuestMemory, ptr: int, length: int) -> None:
        data = mem.read(ptr, length)
        if self.on_emit is None:
            self.emitted.append(data)
        elif self.on_emit(data) is False:
            # the receiver is gone (an HTTP client disconnected): the guest should stop
            raise NnError(Errno.RUNTIME_ERROR, "the receiver of the response is gone")

    def last_error(self, mem: GuestMemory, buf: int, buf_max: int, written: int) -> Errno:
        return mem.write_output(buf, buf_max, written, self.error_message.encode())
