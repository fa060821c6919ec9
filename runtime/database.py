"""Postgres for a role: wait until it answers (for as long as it takes), then a pool.

The pool heals itself afterwards: a connection lost with a restart is replaced on the next
acquire, so only start-up needs a loop. Queries that fail meanwhile raise outage errors
(``errors.is_database_outage``) that each role waits out in its own way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import structlog

from runtime.backoff import DEFAULT_BACKOFF, Backoff, sleep_or_stop
from runtime.errors import describe, is_database_outage
from runtime.health import Dependency
from runtime.servers import server_name

__all__ = ["close_pool", "connect", "init_connection", "open_pool", "wait_for_database"]

log = structlog.get_logger("runtime")

CONNECT_TIMEOUT_S = 10.0


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    # jsonb travels as orjson bytes both ways: faster than the stdlib and exact for ints.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def connect(database_url: str) -> asyncpg.Connection[Any]:
    """One connection with payhook's codecs (fails at once if Postgres cannot be reached)."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    await init_connection(conn)
    return conn


async def wait_for_database(
    database_url: str,
    stop: asyncio.Event,
    dependency: Dependency,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> asyncpg.Connection[Any] | None:
    """A connection once Postgres answers; ``None`` if ``stop`` came first.

    One log line per failed attempt, naming the server (never the password) and the reason.
    """
    server = f"postgres {server_name(database_url)}"
    attempt = 0
    while not stop.is_set():
        try:
            conn = await connect(database_url)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            delay = backoff.delay(attempt)
            attempt += 1
            dependency.down(describe(exc))
            log.warning(
                "runtime.dependency_unavailable",
                dependency=dependency.name,
                server=server,
                reason=describe(exc),
                attempt=attempt,
                retry_in_s=round(delay, 2),
            )
            await sleep_or_stop(stop, delay)
            continue
        if attempt:
            log.info("runtime.dependency_available", dependency=dependency.name, server=server)
        dependency.up()
        return conn
    return None


async def open_pool(
    database_url: str,
    stop: asyncio.Event,
    dependency: Dependency,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 30.0,
) -> asyncpg.Pool[Any] | None:
    """A pool once Postgres answers; ``None`` if ``stop`` came first."""
    while True:
        probe = await wait_for_database(database_url, stop, dependency)
        if probe is None:
            return None
        await probe.close()
        try:
            pool = await asyncpg.create_pool(
                database_url,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout,
                timeout=CONNECT_TIMEOUT_S,
                init=init_connection,
                reset=_no_session_state,
            )
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            dependency.down(describe(exc))
            continue  # it went away again between the probe and the pool: wait again
        assert pool is not None
        dependency.up()
        return pool


async def _no_session_state(_: asyncpg.Connection[Any]) -> None:
    """Skip asyncpg's reset query on release (``RESET ALL; CLOSE ALL; UNLISTEN *; …``).

    payhook's pooled connections keep no session state: no SET, no LISTEN (the relay listens
    on a connection of its own), no session advisory locks (only ``pg_advisory_xact_lock``),
    no cursors outside a transaction. asyncpg still rolls back a transaction left open before
    calling this. The reset query was a round trip per acquire: measured 10 % of the webhook
    worker's CPU (bench/webhook_drain.py with py-spy).
    """


async def close_pool(pool: asyncpg.Pool[Any], timeout_s: float = 5.0) -> None:
    """Close gracefully (waits for released connections); terminate what is left after that."""
    try:
        async with asyncio.timeout(timeout_s):
            await pool.close()
    except (TimeoutError, *_CLOSE_ERRORS):
        pool.terminate()


_CLOSE_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresError)
