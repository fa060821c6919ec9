"""Outbox relay: publish ``events`` rows the ledger committed, then mark them published.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several relays can run; a batch is
published with confirms (all in flight at once) inside the claiming transaction, and only
then marked. A crash between confirm and commit publishes the batch again: consumers see a
duplicate with the same event id, which is the at-least-once contract, never a loss.
The ledger's ``NOTIFY payhook_outbox`` wakes the relay at once; a slow poll covers a missed
notification (e.g. while the listening connection reconnects).

While the ledger publishes its events itself (``ledger_publishes_events``, the default:
``workers/outbox.py``) it sends no notification, and the relay is the sweeper: every poll it
publishes the rows that stayed unpublished longer than ``SWEEP_AFTER_S`` (a ledger that died
or lost the broker between its commit and its mark).

Outages: the relay waits for Postgres at start and keeps its pool through restarts (a failed
batch is rolled back and retried after a backoff); a lost broker connection ends the session
and the runtime reconnects (``runtime.broker.run_sessions``). Nothing exits for either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractExchange

from contracts.topology import OUTBOX_CHANNEL, Topology
from runtime import database
from runtime.backoff import DEFAULT_BACKOFF, sleep_or_stop, wait_any
from runtime.broker import BrokerNodes, Session, declare, run_sessions
from runtime.errors import describe, is_database_outage
from runtime.health import Dependency
from runtime.metrics import refresh_periodically
from runtime.process import RoleContext
from workers.metrics import RELAY_PUBLISHED, refresh_outbox
from workers.outbox import SWEEP_AFTER_S, OutboxEvent, publish_events

__all__ = ["OUTBOX_CHANNEL", "publish_pending", "run_relay"]

log = structlog.get_logger("relay")

_POLL_INTERVAL_S = 1.0

# ``$2``: how old a row must be to be taken (0: any row; ``SWEEP_AFTER_S`` while the ledger
# publishes its own); ``$3``: rows a notification named, taken whatever their age.
_CLAIM = """
    SELECT ctid, seq, id, type, routing_key, correlation_id, body
    FROM events
    WHERE published_at IS NULL
      AND (created_at <= now() - make_interval(secs => $2) OR seq = ANY($3::bigint[]))
    ORDER BY seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"""


async def publish_pending(
    conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any],
    exchange: AbstractExchange,
    batch_size: int,
    older_than_s: float = 0.0,
    named: Collection[int] = (),
) -> list[int]:
    """Publish one batch of unpublished events; returns the ``seq`` of each one published.

    ``older_than_s`` leaves younger rows alone (the ledger is publishing those itself)
    except those ``named`` (a notification said nobody else publishes them).
    """
    async with conn.transaction():
        rows = await conn.fetch(_CLAIM, batch_size, older_than_s, list(named))
        if not rows:
            return []
        await publish_events(
            exchange,
            [
                OutboxEvent(
                    r["seq"],
                    r["id"],
                    r["type"],
                    r["routing_key"],
                    r["correlation_id"],
                    orjson.dumps(r["body"]),  # jsonb, decoded by the pool's codec
                )
                for r in rows
            ],
        )
        # By ctid (a TID scan whatever the statistics): the rows are locked FOR UPDATE in
        # this transaction, so nobody can move them. By id, the generic plan Postgres caches
        # for a prepared statement froze as a sequential scan of ``events`` when the table
        # was young (2.3 ms a batch at 10,000 events in an e2e run, growing with the table).
        await conn.execute(
            "UPDATE events SET published_at = now() WHERE ctid = ANY($1::tid[])",
            [row["ctid"] for row in rows],
        )
    return [row["seq"] for row in rows]


class _Wakeups:
    """What the notifications since the last batch asked for.

    A notification's payload lists the ``seq`` of the rows its transaction wrote; an empty one
    means every unpublished row (``everything``: also what ``_listen`` asks for after it
    (re)connected, when the relay publishes everything).
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._named: set[int] = set()
        self._everything = False

    def notified(self, payload: str) -> None:
        try:
            seqs = {int(seq) for seq in payload.split(",")} if payload else set()
        except ValueError:
            seqs = set()  # not a list of ours: take it as "everything"
        if seqs:
            self._named |= seqs
        else:
            self._everything = True
        self.event.set()

    def everything(self) -> None:
        self.notified("")

    def take(self) -> tuple[set[int], bool]:
        named, everything = self._named, self._everything
        self._named, self._everything = set(), False
        return named, everything

    def give_back(self, named: set[int], everything: bool) -> None:
        """What a batch took and did not do (it failed, or was full): for the next one."""
        self._named |= named
        self._everything |= everything
        self.event.set()


async def run_relay(ctx: RoleContext) -> None:
    settings, stop = ctx.settings, ctx.stop
    topology = Topology(settings.amqp_namespace)
    postgres = ctx.dependency("postgres")
    rabbitmq = ctx.dependency("rabbitmq")  # registered now: readiness knows both at once
    pool = await database.open_pool(settings.database_url, stop, postgres, min_size=1, max_size=2)
    if pool is None:
        return
    wake = _Wakeups()
    sweeping = settings.ledger_publishes_events
    listener = asyncio.create_task(
        _listen(settings.database_url, wake, stop, postgres, sweeping=sweeping)
    )
    gauges = (
        asyncio.create_task(refresh_periodically("relay", lambda: refresh_outbox(pool), stop, 5.0))
        if settings.metrics
        else None
    )

    async def session(broker: Session) -> None:
        channel = await broker.channel(publisher_confirms=True)
        await declare(channel, topology.declarations(ctx.config.webhook_schedule))
        exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
        # While the ledger publishes its own events, only what it left behind is ours.
        older_than_s = SWEEP_AFTER_S if sweeping else 0.0
        log.info("relay.started", sweeps_older_than_s=older_than_s)
        await _relay(
            pool, exchange, settings.relay_batch_size, older_than_s, wake, stop, broker, postgres
        )

    try:
        await run_sessions(
            BrokerNodes(settings.amqp_url),
            stop,
            rabbitmq,
            session,
            name="payhook-relay",
        )
    finally:
        if gauges is not None:
            gauges.cancel()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await database.close_pool(pool, settings.shutdown_grace_s)
        log.info("relay.stopped")


async def _relay(
    pool: asyncpg.Pool[Any],
    exchange: AbstractExchange,
    batch_size: int,
    older_than_s: float,
    wake: _Wakeups,
    stop: asyncio.Event,
    broker: Session,
    postgres: Dependency,
) -> None:
    """Publish batches until stopped or the broker session is lost."""
    failures = 0
    while not (stop.is_set() or broker.lost.is_set()):
        wake.event.clear()
        named, everything = wake.take()
        try:
            async with pool.acquire() as conn:
                published = await publish_pending(
                    conn, exchange, batch_size, 0.0 if everything else older_than_s, named
                )
        except Exception as exc:
            wake.give_back(named, everything)
            if broker.lost.is_set():
                return  # the session ends; the runtime reconnects
            if not is_database_outage(exc):
                raise  # a broker error ends the session; anything else is a bug
            postgres.down(describe(exc))
            delay = DEFAULT_BACKOFF.delay(failures)
            failures += 1
            log.warning("relay.batch_failed", reason=describe(exc), retry_in_s=round(delay, 2))
            await sleep_or_stop(stop, delay)
            continue
        if failures:
            log.info("relay.resumed", after_failures=failures)
        failures = 0
        postgres.up()
        if published:
            RELAY_PUBLISHED.inc(len(published))
            log.debug("relay.published", count=len(published))
            if len(published) == batch_size:  # a full batch: what it left waits for the next
                wake.give_back(named.difference(published), everything)
            continue
        await wait_any(stop, wake.event, broker.lost, timeout=_POLL_INTERVAL_S)


async def _listen(
    database_url: str,
    wake: _Wakeups,
    stop: asyncio.Event,
    postgres: Dependency,
    *,
    sweeping: bool,
) -> None:
    """Keep a ``LISTEN payhook_outbox`` connection open, reconnecting when it drops.

    Once listening, anything committed while it was not may have gone unnoticed: publishing
    everything, the relay takes every unpublished row; sweeping, it does not, since young
    rows are the ledger's, in flight (taking them would publish them twice): a notification
    it missed waits for the sweep.
    """
    while not stop.is_set():
        conn = await database.wait_for_database(database_url, stop, postgres)
        if conn is None:
            return
        closed = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _, closed=closed: closed.set())
            await conn.add_listener(OUTBOX_CHANNEL, lambda *args: wake.notified(args[-1]))
            if sweeping:
                wake.event.set()
            else:
                wake.everything()
            await wait_any(stop, closed)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()
