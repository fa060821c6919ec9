"""Outbox relay: publish ``events`` rows the ledger committed, then mark them published.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several relays can run; a batch is
published with confirms (all in flight at once) inside the claiming transaction, and only
then marked. A crash between confirm and commit publishes the batch again: consumers see a
duplicate with the same event id, which is the at-least-once contract, never a loss.
The ledger's ``NOTIFY payhook_outbox`` wakes the relay at once; a slow poll covers a missed
notification (e.g. while the listening connection reconnects).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractExchange

from contracts.config import Config, Settings
from contracts.events import encode_event
from contracts.topology import HEADER_CORRELATION_ID, Topology
from workers import amqp, db

__all__ = ["OUTBOX_CHANNEL", "publish_pending", "run_relay"]

log = structlog.get_logger("relay")

OUTBOX_CHANNEL = "payhook_outbox"
_POLL_INTERVAL_S = 1.0
_ERROR_BACKOFF_S = 1.0

_CLAIM = """
    SELECT id, routing_key, correlation_id, body
    FROM events
    WHERE published_at IS NULL
    ORDER BY seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"""


async def publish_pending(
    conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any],
    exchange: AbstractExchange,
    batch_size: int,
) -> int:
    """Publish one batch of unpublished events; returns how many were published."""
    async with conn.transaction():
        rows = await conn.fetch(_CLAIM, batch_size)
        if not rows:
            return 0
        await asyncio.gather(*(_publish(exchange, row) for row in rows))
        await conn.execute(
            "UPDATE events SET published_at = now() WHERE id = ANY($1::text[])",
            [row["id"] for row in rows],
        )
    return len(rows)


async def _publish(exchange: AbstractExchange, row: asyncpg.Record) -> None:
    message = aio_pika.Message(
        body=encode_event(row["body"]),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/cloudevents+json",
        message_id=row["id"],
        correlation_id=row["correlation_id"] or None,
        headers={HEADER_CORRELATION_ID: row["correlation_id"]},
        type=row["body"]["type"],
    )
    # mandatory: an event no queue would take (topology missing) must fail, not vanish.
    await exchange.publish(message, routing_key=row["routing_key"], mandatory=True, timeout=30)


async def run_relay(settings: Settings, config: Config, stop: asyncio.Event) -> None:
    topology = Topology(settings.amqp_namespace)
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
    connection = await amqp.connect(settings.amqp_url, name="payhook-relay")
    wake = asyncio.Event()
    listener: asyncpg.Connection[Any] | None = None
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await amqp.declare_topology(channel, topology, config.webhook_schedule)
        exchange = await channel.get_exchange(topology.events_exchange)
        listener = await db.connect(settings.database_url)
        await listener.add_listener(OUTBOX_CHANNEL, lambda *_: wake.set())
        log.info("relay.started")
        while not stop.is_set():
            try:
                async with pool.acquire() as conn:
                    published = await publish_pending(conn, exchange, settings.relay_batch_size)
            except (OSError, asyncpg.PostgresError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("relay.batch_failed", error=f"{type(exc).__name__}: {exc}")
                await _sleep_or_stop(stop, _ERROR_BACKOFF_S)
                continue
            if published:
                log.debug("relay.published", count=published)
                continue
            wake.clear()
            await _wait_any(stop, wake, _POLL_INTERVAL_S)
    finally:
        if listener is not None:
            await listener.close()
        await connection.close()
        async with asyncio.timeout(settings.shutdown_grace_s):
            await pool.close()
        log.info("relay.stopped")


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
