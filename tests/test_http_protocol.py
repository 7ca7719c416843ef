"""The bounded httptools protocol fed byte reads directly, so that where one read ends is chosen
by the test rather than by the network (tests/test_server.py drives it over real sockets)."""

from __future__ import annotations

import asyncio
import json

from uvicorn.config import Config
from uvicorn.server import ServerState

from llama_host.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol


class Transport(asyncio.Transport):
    """Records what the protocol writes; the rest is what uvicorn asks of a socket transport."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = self.eof = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % len(body)})


def feed(*reads: bytes) -> Transport:
    """Each read as one data_received, letting the app run in between."""

    async def run() -> Transport:
        protocol = BoundedHttpToolsProtocol(Config(app=app, log_level="critical"), ServerState(), {})
        transport = Transport()
        protocol.connection_made(transport)
        for data in reads:
            protocol.data_received(data)
            for _ in range(5):
                await asyncio.sleep(0)
        return transport

    return asyncio.run(run())


def head(**headers: int) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"%s: %d\r\n" % (k.encode(), v) for k, v in headers.items())


def test_a_large_last_read_of_a_body_is_not_head():
    # The read that ends a request leaves the parser waiting for the next head; it is body.
    body = b"b" * (2 * MAX_HEAD_BYTES)
    t = feed(head(**{"Content-Length": len(body)}) + b"\r\n" + body[:10], body[10:])
    assert t.written.startswith(b"HTTP/1.1 200 ") and b"\r\n%d\r\n" % len(body) in t.written
    assert not t.closing


def test_a_request_and_a_large_body_in_one_read():
    body = b"b" * (2 * MAX_HEAD_BYTES)
    t = feed(head(**{"Content-Length": len(body)}) + b"\r\n" + body)
    assert t.written.startswith(b"HTTP/1.1 200 ")


def refused(t: Transport) -> dict:
    status, _, body = t.written.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 Request Header Fields Too Large") and t.eof
    assert t.written.count(b"HTTP/1.1 ") == 1
    return json.loads(body)["error"]


def test_a_complete_head_over_the_bound_in_one_read():
    many = {f"X-{i}": 10**900 for i in range(MAX_HEAD_BYTES // 900 + 1)}  # 901-digit values: just over
    error = refused(feed(head(**many) + b"\r\n"))
    assert error["code"] == "request_headers_too_large"


def test_a_head_over_the_bound_in_small_reads():
    reads = [b"POST / HTTP/1.1\r\nHost: x\r\nX-Long: "] + [b"v" * 1000] * (MAX_HEAD_BYTES // 1000 + 1)
    refused(feed(*reads))


def test_the_second_request_on_a_connection_is_bounded_too():
    first = head(**{"Content-Length": 2}) + b"\r\nok"
    t = feed(first, b"GET / HTTP/1.1\r\nX-Long: " + b"v" * (MAX_HEAD_BYTES + 1))
    assert t.written.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 431 " in t.written


def test_after_a_refusal_further_reads_are_dropped():
    reads = [b"GET / HTTP/1.1\r\nX-Long: " + b"v" * (MAX_HEAD_BYTES + 1), b"\r\n\r\n", head() + b"\r\n"]
    t = feed(*reads)
    assert t.written.count(b"HTTP/1.1 ") == 1
