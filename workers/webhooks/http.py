"""A lean HTTP/1.1 POST client for webhooks: one keep-alive pool per endpoint.

Why not aiohttp's client: per delivery it built a ``ClientRequest``, went through the
connector, a writer and a ``ClientResponse``: 16-24 % of the webhook worker's CPU (about
100 us of 500 us) under ``bench/webhook_drain.py``. Here the request line and the fixed headers
are encoded once per endpoint, each request is one ``transport.write`` of ready bytes, and the
answer is parsed by httptools (llhttp, C; ``http_connection.py``).

What it does not do, on purpose: follow redirects (a 3xx is the merchant's answer), proxies,
cookies, compression (no ``accept-encoding`` is sent), ``Expect: 100-continue``, HTTP/2.

Errors (``error_class`` in brackets, as the aiohttp client's were named): ``BlockedAddress``
from the SSRF guard, raised as is; ``DnsError`` [dns_error]; ``ConnectError``
[connection_error], also for TLS handshake and certificate failures; the connection's
``ServerDisconnectedError`` [server_disconnected_error], ``ClientOSError`` [client_os_error]
and ``InvalidResponseError`` [client_response_error]; ``TimeoutError`` past the deadline;
``ValueError`` for a header value with CR or LF (no header injection).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp.abc import AbstractResolver

from workers.webhooks.http_connection import (
    ClientOSError,
    Connection,
    HttpClientError,
    InvalidResponseError,
    ServerDisconnectedError,
)
from workers.webhooks.ssrf import BlockedAddress

__all__ = [
    "ClientOSError",
    "ConnectError",
    "DnsError",
    "HttpClientError",
    "HttpPool",
    "InvalidResponseError",
    "Response",
    "ServerDisconnectedError",
]

# An idle connection older than this is closed instead of reused: servers drop idle ones
# after 5-75 s, and the older it is the likelier the race with their close. aiohttp's value.
KEEPALIVE_S = 15.0
# Resolved addresses are reused this long (aiohttp's ttl_dns_cache as the worker set it); they
# passed the guard when resolved, so connecting to them again is as safe.
DNS_TTL_S = 10.0
# Body bytes read and dropped past the kept ones so the connection can serve the next request;
# past this, closing is cheaper than reading on.
DISCARD_LIMIT = 64 * 1024
# Characters left as they are in the request target: printable ASCII except space (existing
# %XX escapes stay); anything else (spaces, controls, non-ASCII) is percent-encoded, so a URL
# cannot break the request line.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


class ConnectError(HttpClientError):
    """No connection could be made to any address (refused, unreachable, TLS failed)."""

    error_class = "connection_error"


class DnsError(HttpClientError):
    """The host name did not resolve."""

    error_class = "dns_error"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    retry_after: str | None  # the first Retry-After header, as sent
    body: bytes  # the first ``keep`` bytes of the body


@functools.cache
def default_tls() -> ssl.SSLContext:
    """Certificate and host name verification against the system's CAs.

    One per process: loading the CA store takes milliseconds.
    """
    return ssl.create_default_context()


class HttpPool:
    """POSTs to one URL over at most ``limit`` keep-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        connect_timeout: float,
        resolver: AbstractResolver,
        fixed_headers: Sequence[tuple[str, str]] = (),
        keep: int = 4096,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = (tls or default_tls()) if parts.scheme == "https" else None
        # For TLS: SNI and the name the certificate must carry (None for an IP literal:
        # the certificate is then checked against the address).
        ascii_host = self._host.encode("idna").decode("ascii")
        self._server_hostname = ascii_host if self._tls is not None else None
        self._literal = _is_ip_literal(self._host)
        host_header = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        if parts.port is not None:
            host_header += f":{parts.port}"
        target = quote(parts.path or "/", safe=_TARGET_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_TARGET_SAFE)
        headers = [("host", host_header), *fixed_headers]
        if parts.username is not None:
            # As aiohttp did with credentials in the URL.
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            credentials = base64.b64encode(userinfo.encode()).decode()
            headers.append(("authorization", f"Basic {credentials}"))
        self._head = f"POST {target} HTTP/1.1\r\n".encode() + _header_lines(headers)
        self._limit = max(1, limit)
        self._slots = asyncio.Semaphore(self._limit)
        self._connect_timeout = connect_timeout
        self._resolver = resolver
        self._keep = keep
        self._idle: list[Connection] = []  # most recently used last
        self._all: set[Connection] = set()
        self._addresses: list[tuple[str, int, int]] = []
        self._resolved_until = 0.0
        self._closed = False

    async def post(
        self, headers: Sequence[tuple[str, str]], body: bytes, *, time_limit: float
    ) -> Response:
        """POST ``body`` with ``headers`` added; the whole exchange ends within ``time_limit``.

        A limit of its own rather than the caller's ``asyncio.timeout``: once the status line
        and headers are in, the outcome is decided, so a body that stalls or breaks off
        before the deadline cuts only what is kept of it (and the connection), not the answer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        data = b"".join(
            (
                self._head,
                _header_lines(headers),
                b"content-length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        conn: Connection | None = None
        slot = False
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
                slot = True
                conn = await self._exchange(data)
            if not conn.complete:
                try:
                    async with asyncio.timeout_at(deadline):
                        await conn.wait_complete()
                except (TimeoutError, HttpClientError):
                    conn.close()  # the status stands; the connection is of no further use
            response = Response(conn.status, conn.retry_after, bytes(conn.body))
            self._release(conn)
            conn = None
            return response
        finally:
            if conn is not None:
                # Cancelled or failed midway: this connection's state is unknown.
                conn.close()
                self._all.discard(conn)
            if slot:
                self._slots.release()

    async def _exchange(self, data: bytes) -> Connection:
        """Send on a pooled connection (or a new one); returns once the headers are in."""
        conn = self._take_idle()
        if conn is None:
            return await self._send_on_new(data)
        try:
            await conn.send(data)
        except BaseException as exc:
            conn.close()
            self._all.discard(conn)
            if not isinstance(exc, ServerDisconnectedError | ClientOSError) or conn.received_any:
                raise
            # The pooled connection was dead before a byte of the answer came: the server
            # closed it while idle (its keep-alive ran out as we wrote). Send once more on a
            # fresh connection. Even if the server did take the request before closing, this
            # is a duplicate with the same webhook-id that the schedule's retry would send an
            # hour later anyway; merchants dedupe on webhook-id (docs/webhooks.md). A fresh
            # connection that fails is never retried. (aiohttp retries only idempotent
            # methods, so it failed such a POST; this is the one place we do better.)
            return await self._send_on_new(data)
        return conn

    async def _send_on_new(self, data: bytes) -> Connection:
        conn = await self._connect()
        try:
            await conn.send(data)
        except BaseException:
            conn.close()
            self._all.discard(conn)
            raise
        return conn

    def _take_idle(self) -> Connection | None:
        now = asyncio.get_running_loop().time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.open and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
            self._all.discard(conn)
        return None

    def _release(self, conn: Connection) -> None:
        now = asyncio.get_running_loop().time()
        if conn.finished() and not self._closed:
            conn.idle_since = now
            self._idle.append(conn)
        else:
            conn.close()
            self._all.discard(conn)
        # Reuse takes the most recent, so after a burst the oldest would idle on unseen:
        # close those past the keep-alive time here (the front of the list is the oldest).
        idle = self._idle
        while idle and (not idle[0].open or now - idle[0].idle_since >= KEEPALIVE_S):
            stale = idle.pop(0)
            stale.close()
            self._all.discard(stale)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            addresses = await self._resolve(loop)
            last: BaseException | None = None
            for host, port, family in addresses:
                try:
                    _, conn = await loop.create_connection(
                        lambda: Connection(loop, self._keep, DISCARD_LIMIT),
                        host,  # an address, never a name: what the guard checked
                        port,
                        family=family,
                        ssl=self._tls,
                        server_hostname=self._server_hostname,
                    )
                except OSError as exc:  # ssl.SSLError, certificate errors included
                    last = exc
                    continue
                if self._closed:
                    conn.close()
                    raise ConnectError("the pool is closed")
                self._all.add(conn)
                return conn
        raise ConnectError(f"cannot connect to {self._host}:{self._port}: {last}") from last

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[tuple[str, int, int]]:
        if self._literal:
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            return [(self._host, self._port, family)]
        if self._addresses and loop.time() < self._resolved_until:
            return self._addresses
        try:
            results: list[Any] = await self._resolver.resolve(
                self._host, self._port, socket.AF_UNSPEC
            )
        except OSError as exc:
            if isinstance(exc, BlockedAddress):
                raise
            raise DnsError(f"cannot resolve {self._host}: {exc}") from exc
        self._addresses = [(r["host"], r["port"], r["family"]) for r in results]
        self._resolved_until = loop.time() + DNS_TTL_S
        return self._addresses

    async def close(self) -> None:
        """Close every connection, idle or in use, and the resolver (the pool owns it)."""
        self._closed = True
        conns, self._idle = list(self._all), []
        self._all.clear()
        for conn in conns:
            conn.close()
        if conns:
            # A TLS close waits for the peer's close_notify; do not let a peer hold shutdown.
            await asyncio.wait([c.closed for c in conns], timeout=1.0)
            for conn in conns:
                if not conn.closed.done():
                    conn.abort()
        await self._resolver.close()


def _header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"CR or LF in the {name!r} header: refused (header injection)")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode()


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
