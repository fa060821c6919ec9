"""The webhook HTTP client (workers/webhooks/http.py) against real servers on 127.0.0.1.

Every scenario runs on the standard asyncio loop and on uvloop (what production runs), the
latter in a thread of its own with its own check for unhandled loop exceptions.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp.resolver import DefaultResolver

from contracts.config import Merchant, Secret
from workers.webhooks import http
from workers.webhooks.delivery import (
    FIXED_HEADERS,
    RESPONSE_BODY_LIMIT,
    Endpoint,
    post_event,
)
from workers.webhooks.http import (
    ClientOSError,
    ConnectError,
    HttpPool,
    ServerDisconnectedError,
    default_tls,
)
from workers.webhooks.retry import Outcome

from .helpers import new_secret
from .http_servers import RawConnection, RawRequest, RawServer, self_signed

Scenario = Callable[[], Awaitable[None]]
Runner = Callable[[Scenario], Awaitable[None]]

HEADERS = (("webhook-id", "evt_1"), ("webhook-timestamp", "1700000000"))

# An event loop's timer may fire up to a millisecond before a deadline measured in floats.
TIMER_ROUNDING_S = 0.002


def _on_uvloop(scenario: Scenario) -> None:
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        await scenario()

    uvloop.run(main())
    assert not errors, errors


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    async def runner(scenario: Scenario) -> None:
        if request.param == "asyncio":
            await scenario()
        else:
            await asyncio.to_thread(_on_uvloop, scenario)

    return runner


def make_pool(
    url: str, *, limit: int = 4, connect_timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> HttpPool:
    return HttpPool(
        url,
        limit=limit,
        connect_timeout=connect_timeout,
        resolver=DefaultResolver(),
        fixed_headers=FIXED_HEADERS,
        keep=RESPONSE_BODY_LIMIT,
        tls=tls,
    )


def answer_bytes(data: bytes, *, then_close: bool = False) -> Callable[..., Awaitable[None]]:
    async def answer(conn: RawConnection, _: RawRequest) -> None:
        conn.write(data)
        if then_close:
            conn.close()

    return answer


async def test_keep_alive_reuses_one_connection_and_sends_exact_bytes(run: Runner) -> None:
    async def scenario() -> None:
        async with RawServer().serving() as server:
            pool = make_pool(server.url(path="/hooks/in?x=1"))
            bodies = [b'{"n":%d}' % n for n in range(20)]
            for body in bodies:
                response = await pool.post(HEADERS, body, time_limit=5)
                assert (response.status, response.body) == (200, b"ok")
            assert len(server.connections) == 1
            assert [r.body for r in server.requests] == bodies
            first = server.requests[0]
            assert (first.method, first.target) == ("POST", "/hooks/in?x=1")
            assert first.headers == {
                "host": f"127.0.0.1:{server.port}",
                "content-type": "application/json",
                "user-agent": "payhook-webhooks/1",
                "webhook-id": "evt_1",
                "webhook-timestamp": "1700000000",
                "content-length": str(len(bodies[0])),
            }
            await pool.close()
            await server.wait_for(lambda: server.open_connections() == 0)

    await run(scenario)


async def test_concurrent_posts_open_at_most_limit_connections(run: Runner) -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def held(conn: RawConnection, request: RawRequest) -> None:
            await release.wait()
            conn.write(b"HTTP/1.1 204 No Content\r\n\r\n")

        async with RawServer(held).serving() as server:
            pool = make_pool(server.url(), limit=3)
            posts = [
                asyncio.create_task(pool.post(HEADERS, b"{}", time_limit=10)) for _ in range(9)
            ]
            await server.wait_for(lambda: len(server.requests) == 3)
            assert len(server.connections) == 3
            release.set()
            responses = await asyncio.gather(*posts)
            assert {r.status for r in responses} == {204}
            assert len(server.connections) == 3
            assert len(server.requests) == 9
            await pool.close()

    await run(scenario)


async def test_chunked_answer_is_read_whole_and_the_connection_kept(run: Runner) -> None:
    async def chunked(conn: RawConnection, _: RawRequest) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n")
        for piece in (b"hello", b", ", b"world"):
            await asyncio.sleep(0)  # separate writes, so separate reads on the client
            conn.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.write(b"0\r\n\r\n")

    async def scenario() -> None:
        async with RawServer(chunked).serving() as server:
            pool = make_pool(server.url())
            for _ in range(3):
                response = await pool.post(HEADERS, b"{}", time_limit=5)
                assert (response.status, response.body) == (200, b"hello, world")
                assert response.retry_after == "7"
            assert len(server.connections) == 1
            await pool.close()

    await run(scenario)


@pytest.mark.parametrize(
    ("answer", "server_closes"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\n\r\nok", True),  # the body ends where the connection does
    ],
    ids=["connection-close", "http-1.0", "close-delimited"],
)
async def test_answers_without_keep_alive_close_the_connection(
    run: Runner, answer: bytes, server_closes: bool
) -> None:
    async def scenario() -> None:
        async with RawServer(answer_bytes(answer, then_close=server_closes)).serving() as server:
            pool = make_pool(server.url())
            for _ in range(3):
                response = await pool.post(HEADERS, b"{}", time_limit=5)
                assert (response.status, response.body) == (200, b"ok")
            # One connection per request, and each closed even where the server left it open.
            assert len(server.connections) == 3
            await server.wait_for(lambda: server.open_connections() == 0)
            await pool.close()

    await run(scenario)


@pytest.mark.parametrize(
    ("framing", "size", "reused"),
    [
        ("length", 20_000, True),  # read through and dropped: the connection serves on
        ("length", 1_000_000, False),  # too much to read through: closed instead
        ("chunked", 1_000_000, False),
    ],
)
async def test_an_oversized_body_keeps_only_its_head(
    run: Runner, framing: str, size: int, reused: bool
) -> None:
    body = bytes(range(256)) * (size // 256)

    async def big(conn: RawConnection, _: RawRequest) -> None:
        if framing == "length":
            conn.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            return
        conn.write(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 8192):
            piece = body[start : start + 8192]
            conn.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.write(b"0\r\n\r\n")

    async def scenario() -> None:
        async with RawServer(big).serving() as server:
            pool = make_pool(server.url())
            for _ in range(2):
                response = await pool.post(HEADERS, b"{}", time_limit=10)
                assert (response.status, response.body) == (500, body[:RESPONSE_BODY_LIMIT])
            assert len(server.connections) == (1 if reused else 2)
            await pool.close()

    await run(scenario)


async def test_a_server_that_closes_after_each_answer_costs_no_attempt(run: Runner) -> None:
    # It says nothing of closing (no "Connection: close"): the client learns it either from
    # the close it sees while the connection idles or from the dead write (then it resends).
    answer = answer_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", then_close=True)

    async def scenario() -> None:
        async with RawServer(answer).serving() as server:
            pool = make_pool(server.url())
            for _ in range(5):
                assert (await pool.post(HEADERS, b"{}", time_limit=5)).status == 200
            assert len(server.connections) == 5
            await pool.close()

    await run(scenario)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_pooled_connection_dead_on_write_is_retried_once_on_a_fresh_one(
    run: Runner, how: str
) -> None:
    # The race the previous test may or may not hit, made certain: the server drops its
    # kept-alive connection just as the next request arrives, without reading it.
    def drop_second(conn: RawConnection, _: bytes) -> bool:
        if conn.index == 0 and conn.server.requests:
            conn.close() if how == "close" else conn.abort()
            return True
        return False

    async def scenario() -> None:
        async with RawServer(on_data=drop_second).serving() as server:
            pool = make_pool(server.url())
            for n in range(2):
                response = await pool.post(HEADERS, b'{"n":%d}' % n, time_limit=5)
                assert response.status == 200
            assert len(server.connections) == 2
            assert [(r.connection, r.body) for r in server.requests] == [
                (0, b'{"n":0}'),
                (1, b'{"n":1}'),
            ]
            await pool.close()

    await run(scenario)


async def test_a_fresh_connection_that_dies_is_not_retried(run: Runner) -> None:
    def drop(conn: RawConnection, _: bytes) -> bool:
        conn.close()
        return True

    async def scenario() -> None:
        async with RawServer(on_data=drop).serving() as server:
            pool = make_pool(server.url())
            with pytest.raises(ServerDisconnectedError):
                await pool.post(HEADERS, b"{}", time_limit=5)
            assert len(server.connections) == 1
            await pool.close()

    await run(scenario)


async def test_a_reused_connection_that_dies_mid_answer_is_not_retried(run: Runner) -> None:
    async def half_second(conn: RawConnection, request: RawRequest) -> None:
        if request.number == 1:
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            conn.write(b"HTTP/1.1 200 O")  # a byte of the answer came: it was processed
            conn.abort()

    async def scenario() -> None:
        async with RawServer(half_second).serving() as server:
            pool = make_pool(server.url())
            assert (await pool.post(HEADERS, b"{}", time_limit=5)).status == 200
            with pytest.raises((ServerDisconnectedError, ClientOSError)):
                await pool.post(HEADERS, b"{}", time_limit=5)
            assert len(server.connections) == 1
            assert len(server.requests) == 2
            await pool.close()

    await run(scenario)


async def test_slow_headers_time_out_and_free_the_connection_and_slot(run: Runner) -> None:
    release = asyncio.Event()

    async def first_hangs(conn: RawConnection, request: RawRequest) -> None:
        if conn.index == 0:
            await release.wait()
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def scenario() -> None:
        async with RawServer(first_hangs).serving() as server:
            pool = make_pool(server.url(), limit=1)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.post(HEADERS, b"{}", time_limit=0.3)
            # Not before the deadline; uvloop's timers round to the millisecond (seen: 0.29994).
            assert time.monotonic() - started >= 0.3 - TIMER_ROUNDING_S
            await server.wait_for(lambda: server.connections[0].lost.done())
            # The only slot is free again, on a new connection.
            assert (await pool.post(HEADERS, b"{}", time_limit=5)).status == 200
            assert len(server.connections) == 2
            await pool.close()

    await run(scenario)


async def test_a_stalled_body_keeps_the_status_and_what_came(run: Runner) -> None:
    async def stall(conn: RawConnection, _: RawRequest) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")

    async def scenario() -> None:
        async with RawServer(stall).serving() as server:
            pool = make_pool(server.url())
            response = await pool.post(HEADERS, b"{}", time_limit=0.3)
            assert (response.status, response.body) == (200, b"first part")
            await server.wait_for(lambda: server.open_connections() == 0)
            await pool.close()

    await run(scenario)


async def test_the_connect_timeout_covers_a_tls_handshake_that_never_ends(run: Runner) -> None:
    async def scenario() -> None:
        # Plain TCP that swallows the ClientHello: the handshake never completes.
        async with RawServer(on_data=lambda *_: True).serving() as server:
            pool = make_pool(server.url().replace("http:", "https:"), connect_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.post(HEADERS, b"{}", time_limit=60)
            assert time.monotonic() - started < 30  # the connect timeout, not the whole one
            await server.wait_for(lambda: server.open_connections() == 0)
            await pool.close()

    await run(scenario)


async def test_cancelling_a_post_closes_its_connection(run: Runner) -> None:
    async def never(conn: RawConnection, _: RawRequest) -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        async with RawServer(never).serving() as server:
            pool = make_pool(server.url())
            post = asyncio.create_task(pool.post(HEADERS, b"{}", time_limit=60))
            await server.wait_for(lambda: len(server.requests) == 1)
            post.cancel()
            with pytest.raises(asyncio.CancelledError):
                await post
            await server.wait_for(lambda: server.open_connections() == 0)
            await pool.close()

    await run(scenario)


async def test_https_verifies_the_certificate_and_the_name_and_sends_sni(
    run: Runner, tmp_path: Path
) -> None:
    cert = self_signed("localhost")
    names: list[str | None] = []
    server_tls = cert.server_context(tmp_path)
    server_tls.sni_callback = lambda _, name, __: names.append(name)  # type: ignore[assignment,func-returns-value]

    async def scenario() -> None:
        async with RawServer(tls=server_tls).serving() as server:
            trusting = make_pool(server.url("localhost"), tls=cert.client_context())
            for _ in range(3):
                assert (await trusting.post(HEADERS, b"{}", time_limit=5)).status == 200
            assert len(server.connections) == 1
            assert names == ["localhost"]
            assert server.requests[0].headers["host"] == f"localhost:{server.port}"
            await trusting.close()

            # The system's CAs do not know this certificate.
            untrusted = make_pool(server.url("localhost"), tls=default_tls())
            with pytest.raises(ConnectError) as refused:
                await untrusted.post(HEADERS, b"{}", time_limit=5)
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            await untrusted.close()

            # Trusted, but not issued for 127.0.0.1.
            wrong_name = make_pool(server.url("127.0.0.1"), tls=cert.client_context())
            with pytest.raises(ConnectError) as mismatch:
                await wrong_name.post(HEADERS, b"{}", time_limit=5)
            assert isinstance(mismatch.value.__cause__, ssl.SSLCertVerificationError)
            await wrong_name.close()
            assert len(server.requests) == 3

    await run(scenario)


async def test_header_values_with_cr_or_lf_are_refused() -> None:
    async with RawServer().serving() as server:
        pool = make_pool(server.url())
        with pytest.raises(ValueError, match="header injection"):
            await pool.post((("webhook-id", "x\r\nevil: 1"),), b"{}", time_limit=5)
        assert server.connections == []
        await pool.close()


def merchant(url: str, **extra: Any) -> Merchant:
    return Merchant(
        id="shop",
        webhook_url=url,
        secrets=(Secret(new_secret()),),
        allow_private=True,
        timeout_s=5.0,
        **extra,
    )


@pytest.mark.parametrize(
    ("on_data", "answer", "error_class"),
    [
        (lambda conn, _: conn.close() or True, None, "server_disconnected_error"),
        (None, b"HTTP/1.1 ok fine\r\n\r\n", "client_response_error"),
        (None, b"SSH-2.0-OpenSSH_9.6\r\n", "client_response_error"),
    ],
    ids=["closed", "bad-status-line", "not-http"],
)
async def test_post_event_names_protocol_failures(
    on_data: Any, answer: bytes | None, error_class: str
) -> None:
    server = RawServer(answer_bytes(answer) if answer else answer_bytes(b""), on_data=on_data)
    async with server.serving():
        endpoint = Endpoint(merchant(server.url()))
        result = await post_event(endpoint, "evt_1", b"{}")
        await endpoint.close()
    assert (result.outcome, result.status_code, result.error_class) == (
        Outcome.FAILED,
        None,
        error_class,
    )


async def test_post_event_keeps_status_retry_after_and_the_body_head() -> None:
    answer = b"HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 9\r\n\r\nbusy\x00 now"
    async with RawServer(answer_bytes(answer)).serving() as server:
        endpoint = Endpoint(merchant(server.url()))
        result = await post_event(endpoint, "evt_1", b'{"a":1}')
        await endpoint.close()
        await server.wait_for(lambda: server.open_connections() == 0)
    assert (result.outcome, result.status_code, result.retry_after) == (Outcome.FAILED, 503, 120.0)
    assert result.response_body == "busy now"
    sent = server.requests[0]
    assert sent.body == b'{"a":1}'
    assert sent.headers["webhook-signature"].startswith("v1,")


async def test_connections_idle_past_the_keep_alive_time_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "KEEPALIVE_S", 0.0)  # every idle connection is already too old
    async with RawServer().serving() as server:
        pool = make_pool(server.url())
        for _ in range(2):
            assert (await pool.post(HEADERS, b"{}", time_limit=5)).status == 200
        assert len(server.connections) == 2
        await server.wait_for(lambda: server.open_connections() == 0)  # closed by the client
        await pool.close()
