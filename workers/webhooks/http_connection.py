"""One HTTP/1.1 client connection: write a request's bytes, parse the answer with httptools.

httptools is llhttp (Node's C parser) behind a callback interface: this protocol object gets
``on_header``/``on_body``/… calls from inside ``feed_data`` and keeps only what a webhook
attempt needs (status, ``Retry-After``, the first bytes of the body, whether the connection
may be kept). The body beyond what is kept is counted and dropped, never buffered.

A connection serves one request at a time; ``HttpPool`` (``http.py``) owns that discipline.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

__all__ = [
    "ClientOSError",
    "Connection",
    "HttpClientError",
    "InvalidResponseError",
    "ServerDisconnectedError",
]


class HttpClientError(Exception):
    """Root of the client's errors; ``error_class`` is what the attempt log records.

    The names are the ones the aiohttp client's exceptions produced, so attempt rows, metrics
    and dashboards read the same before and after the switch.
    """

    error_class = "client_error"


class ServerDisconnectedError(HttpClientError):
    """The server closed the connection before the status line and headers were complete."""

    error_class = "server_disconnected_error"


class ClientOSError(HttpClientError):
    """The connection broke (reset, …) before the status line and headers were complete."""

    error_class = "client_os_error"


class InvalidResponseError(HttpClientError):
    """What came back is not HTTP/1.x as llhttp accepts it."""

    error_class = "client_response_error"


_RETRY_AFTER = b"retry-after"


class Connection(asyncio.Protocol):
    """A protocol instance per TCP (or TLS) connection; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep: int, discard: int) -> None:
        self._loop = loop
        self._keep = keep  # body bytes kept for the caller
        self._discard = discard  # body bytes read past ``keep`` before giving up the connection
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.open = False
        self.idle_since = 0.0
        self._busy = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.retry_after: str | None = None
        self.body = bytearray()
        self.received_any = False  # any byte of this request's response
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self._body_seen = 0
        self._informational = False

    # -- the caller's side ---------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Write ``data`` (one whole request) and wait for the status line and headers."""
        if self._transport is None or not self.open:
            raise ServerDisconnectedError("the connection closed before the request was sent")
        self._reset()
        self._busy = True
        waiter = self._waiter = self._loop.create_future()
        self._transport.write(data)
        await waiter

    async def wait_complete(self) -> None:
        """Wait for the rest of the body (or for the server to close, if it delimits so).

        Returns early, with what was kept so far, if the connection is gone already.
        """
        if not self.complete and self.open:
            waiter = self._waiter = self._loop.create_future()
            await waiter

    def finished(self) -> bool:
        """True when the exchange ended cleanly and the connection may serve the next one."""
        self._busy = False
        return self.complete and self.keep_alive and self.open

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        if not self._busy or self.complete:
            # Bytes nobody asked for (or after an answer that ends the connection): the
            # connection's framing can no longer be trusted.
            self.close()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponseError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(InvalidResponseError(str(exc)))
        if self._body_seen > self._keep + self._discard:
            # Too much to read through just to keep the connection: stop here. What was kept
            # is all the caller wanted anyway.
            self.complete = True
            self.keep_alive = False
            self.close()
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.headers_done and not self.complete and self._busy:
            if exc is None and not self.keep_alive:
                self.complete = True  # a body delimited by the end of the connection
                self._wake()
            else:
                self._fail(ServerDisconnectedError("the connection closed inside the body"))
        elif not self.headers_done:
            error: HttpClientError
            if exc is None:
                error = ServerDisconnectedError("the server closed the connection")
            else:
                error = ClientOSError(str(exc))
            self._fail(error)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # The first one wins, as aiohttp's ``headers.get`` had it.
        if self.retry_after is None and len(name) == 11 and name.lower() == _RETRY_AFTER:
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx (103 Early Hints, an unasked 100 Continue): the real answer follows.
            self._informational = True
            self.retry_after = None
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        room = self._keep - len(self.body)
        if room > 0:
            self.body += body[:room]
        self._body_seen += len(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake()

    # -- internals -----------------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HttpClientError) -> None:
        self.keep_alive = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()
