"""Raw HTTP servers on 127.0.0.1 for the client's tests, and a self-signed certificate.

``RawServer`` parses requests with httptools (no hand-written parsing) and lets each test
answer with exact bytes: HTTP/1.0, close-delimited or chunked bodies, answers that stall, or
connections dropped at a chosen moment, which an aiohttp server would not produce on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class RawRequest:
    connection: int  # index of the connection it came on (0, 1, …)
    number: int  # 1, 2, … on that connection
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


Answer = Callable[["RawConnection", RawRequest], Awaitable[None]]


async def answer_ok(conn: RawConnection, _: RawRequest) -> None:
    conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class RawConnection(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.index = len(server.connections)
        server.connections.append(self)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpRequestParser(self)
        self._count = 0
        self._start()

    def _start(self) -> None:
        self._target = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def abort(self) -> None:
        assert self.transport is not None
        self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.server.on_data is not None and self.server.on_data(self, data):
            return
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.server.changed()

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._count += 1
        request = RawRequest(
            self.index,
            self._count,
            self._parser.get_method().decode(),
            self._target.decode(),
            self._headers,
            bytes(self._body),
        )
        self._start()
        self.server.requests.append(request)
        self.server.changed()
        self.server.spawn(self.server.answer(self, request))


@dataclass
class RawServer:
    answer: Answer = answer_ok
    tls: ssl.SSLContext | None = None
    # Sees raw bytes before the parser; returns True to swallow them.
    on_data: Callable[[RawConnection, bytes], bool] | None = None
    connections: list[RawConnection] = field(default_factory=list)
    requests: list[RawRequest] = field(default_factory=list)
    port: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, host: str = "127.0.0.1", path: str = "/hooks") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def changed(self) -> None:
        self._changed.set()

    async def wait_for(self, check: Callable[[], bool], within: float = 5.0) -> None:
        """Wait (on the server's own events, not a clock) until ``check()`` holds."""
        async with asyncio.timeout(within):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    def open_connections(self) -> int:
        return sum(1 for c in self.connections if not c.lost.done())

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[RawServer]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: RawConnection(self), "127.0.0.1", 0, ssl=self.tls)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            for task in list(self._tasks):
                task.cancel()
            for conn in self.connections:
                if conn.transport is not None:
                    conn.transport.abort()
            server.close()
            await server.wait_closed()


@dataclass(frozen=True)
class Certificate:
    cert_pem: bytes
    key_pem: bytes

    def server_context(self, tmp_path: Any) -> ssl.SSLContext:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifies as the default context does, but trusts this certificate."""
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=self.cert_pem.decode())
        return context


def self_signed(name: str = "localhost") -> Certificate:
    """A certificate for ``name`` only (no IP address in it), signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


__all__ = [
    "Answer",
    "Certificate",
    "RawConnection",
    "RawRequest",
    "RawServer",
    "answer_ok",
    "self_signed",
]
