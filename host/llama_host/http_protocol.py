"""uvicorn's httptools protocol with a bound on the request head and OpenAI-shaped refusals.

httptools parses in C and is what makes streaming cheap (README, Benchmarks), but unlike h11 (16
KiB) it accepts a request line and headers of any size: one client could make the server buffer
hundreds of megabytes before any route sees the request. Past ``MAX_HEAD_BYTES`` this answers
431; a request that is not valid HTTP gets 400 (uvicorn answers that in plain text). Both are
OpenAI error objects, and the connection closes.

It also bounds time, which uvicorn leaves open (its only timer is keep-alive, armed after a
response): a new connection or a request head must arrive within ``timeout_head`` seconds and a
body within ``timeout_body``, else 408 (a connection that sent nothing just closes). So idle and
slowloris connections cannot hold file descriptors for ever.
"""

from __future__ import annotations

import asyncio
import http

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llama_host.errors import ErrorKind, error_body

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; browsers send a few KiB
LINGER_S = 2.0  # after refusing: how long the rest of the upload is read and dropped


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools stops and uvicorn answers through send_400_response."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Two counts, because httptools hands over a header only once its value has ended:
    _parsed = 0  # bytes of request line and headers the parser has handed over (exact)
    _unparsed = 0  # bytes read while a head stayed incomplete (a header that never ends)
    _in_head = True  # between the end of a request and the end of the next one's head
    _heads = 0  # heads completed on this connection
    _refused = False
    _timer: asyncio.TimerHandle | None = None  # the head's or the body's deadline
    timeout_head = 10.0  # seconds (see with_timeouts)
    timeout_body = 60.0

    @classmethod
    def with_timeouts(cls, head: float, body: float) -> type[BoundedHttpToolsProtocol]:
        """This protocol with other time limits (uvicorn takes a class)."""
        return type(cls.__name__, (cls,), {"timeout_head": head, "timeout_body": body})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.timeout_head, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal (see _refuse): dropped unparsed
        if self._in_head and self._timer is None:  # a new head on a kept-alive connection
            self._arm(self.timeout_head, self._head_timed_out)
        in_head, heads = self._in_head, self._heads
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        # Counted: reads that began inside a head and completed none, so hold no body.
        if in_head and self._heads == heads:
            self._unparsed += len(data)
            if self._unparsed > MAX_HEAD_BYTES:
                self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._unparsed, self._heads = False, 0, self._heads + 1
        self._arm(self.timeout_body, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        self._in_head = True

    # --- deadlines ----------------------------------------------------------------------------

    def _arm(self, seconds: float, callback) -> None:  # noqa: ANN001
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing() or not self._in_head:
            return
        if self._unparsed == 0:  # idle (no byte of this head has come): nothing to answer
            self.transport.close()
            return
        self._refuse(ErrorKind.REQUEST_TIMEOUT, f"the request line and headers did not arrive within {self.timeout_head:g} s")

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self._refused or self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        # The route is still reading: it sees a disconnect, and whatever it answers is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._refuse(ErrorKind.REQUEST_TIMEOUT, f"the request body did not arrive within {self.timeout_body:g} s")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything httptools refuses, _count's exception included."""
        if self._parsed > MAX_HEAD_BYTES:
            self._refuse_head()
        else:
            self._refuse(ErrorKind.INVALID_REQUEST, "the request is not valid HTTP/1.1")

    def _count(self, n: int) -> None:
        self._parsed += n
        if self._parsed > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def _refuse_head(self) -> None:
        self._refuse(ErrorKind.HEADERS_TOO_LARGE, f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes")

    def _refuse(self, kind: ErrorKind, message: str) -> None:
        self.logger.warning("refused a request: %s", message)
        body = orjson.dumps(error_body(kind, message))
        status = http.HTTPStatus(kind.http_status)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status.value, status.phrase.encode(), len(body), body)
        )
        # Closing with the client's upload still arriving would reset the connection, and the
        # client would see that instead of the answer: end our side, drop what still comes for a
        # while, then close.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
