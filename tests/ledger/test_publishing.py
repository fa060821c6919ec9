"""Who publishes the outbox: the ledger right after its commit, the relay what it left behind.

On a real broker and Postgres: the ledger worker publishes a batch's events itself and marks
them (no relay running, no notification sent); the relay, sweeping, takes only rows that
stayed unpublished past ``SWEEP_AFTER_S`` or that a notification named, so a row the ledger
published is not published twice, and a row the ledger could not publish (no broker session
when it committed) still reaches consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractQueue

from contracts.config import Config, Settings
from contracts.statuses import Status
from contracts.topology import OUTBOX_CHANNEL, Topology
from tests.roles import role_context
from workers import amqp, relay
from workers.ledger.apply import Incoming, Policy, apply_batch
from workers.ledger.consumer import run_ledger_worker
from workers.relay import publish_pending, run_relay

from .factory import callback
from .harness import eventually, publish_callbacks, start_workers

S = Status


@pytest.fixture
async def events_queue(
    settings: Settings, namespace: str
) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, AbstractQueue]]:
    """A downstream consumer's queue: every event of the test's namespace."""
    topology = Topology(namespace)
    connection = await amqp.connect(settings.amqp_url, name="publishing-test")
    try:
        channel = await connection.channel(publisher_confirms=True)
        await amqp.declare_topology(channel, topology)
        queue = await channel.declare_queue(f"{namespace}.test-downstream", auto_delete=True)
        await queue.bind(topology.events_exchange, routing_key="#")
        yield channel, queue
    finally:
        await connection.close()


async def _received(queue: AbstractQueue, count: int, patience: float = 30.0) -> list[str]:
    """The message ids of the next ``count`` events (fails if they do not all come)."""
    ids: list[str] = []
    async with asyncio.timeout(patience):
        while len(ids) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.02)
                continue
            assert orjson.loads(message.body)["id"] == message.message_id
            ids.append(message.message_id or "")
    return ids


async def _nothing_more(queue: AbstractQueue) -> None:
    assert await queue.get(no_ack=True, fail=False) is None


async def _outbox(pool: asyncpg.Pool[Any]) -> dict[str, bool]:
    """Event id -> published (marked)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, published_at IS NOT NULL AS done FROM events")
    return {row["id"]: row["done"] for row in rows}


async def test_the_ledger_publishes_and_marks_its_events_without_waking_the_relay(
    pool: asyncpg.Pool[Any],
    settings: Settings,
    ledger_config: Config,
    namespace: str,
    database_url: str,
    events_queue: tuple[Any, AbstractQueue],
) -> None:
    channel, queue = events_queue
    listener = await asyncpg.connect(database_url)
    notifications: list[str] = []
    await listener.add_listener(OUTBOX_CHANNEL, lambda *args: notifications.append(args[-1]))
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_ledger_worker(role_context("worker.ledger", settings, ledger_config, stop))
    )
    try:
        callbacks = [callback(S.PENDING, "T1"), callback(S.SUCCEEDED, "T1")]
        callbacks += [callback(S.SUCCEEDED, f"T{n}") for n in range(2, 12)]
        await publish_callbacks(channel, Topology(namespace), callbacks)

        ids = await _received(queue, len(callbacks))  # no relay runs: the ledger sent them

        async def all_marked() -> bool:
            return all((await _outbox(pool)).values())

        await eventually(all_marked)
        assert sorted(ids) == sorted(await _outbox(pool))  # each event once, none missing
        await listener.fetchval("SELECT 1")  # a round trip: a notification would be in by now
        assert notifications == []
        await _nothing_more(queue)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await listener.close()
    task.result()


async def test_the_relay_sweeps_what_the_ledger_could_not_publish_and_nothing_twice(
    pool: asyncpg.Pool[Any],
    settings: Settings,
    ledger_config: Config,
    namespace: str,
    events_queue: tuple[Any, AbstractQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel, queue = events_queue
    topology = Topology(namespace)
    async with contextlib.AsyncExitStack() as stack:
        # Ledger workers without a broker session for events (as after losing it between
        # commit and publish): they commit, ack, and leave their events unpublished.
        workers = await start_workers(
            stack, count=1, settings=settings, config=ledger_config, pool=pool, topology=topology
        )
        await publish_callbacks(
            channel, topology, [callback(S.SUCCEEDED, f"L{n}") for n in range(6)]
        )
        await workers.wait_handled(6)
        assert list((await _outbox(pool)).values()) == [False] * 6

        # A relay that sweeps after 0.3 s instead of SWEEP_AFTER_S, so the test need not wait.
        monkeypatch.setattr(relay, "SWEEP_AFTER_S", 0.3)
        stop = asyncio.Event()
        relaying = asyncio.create_task(
            run_relay(role_context("relay", settings, ledger_config, stop))
        )
        try:
            ids = await _received(queue, 6)

            async def all_marked() -> bool:
                return all((await _outbox(pool)).values())

            await eventually(all_marked)
            assert sorted(ids) == sorted(await _outbox(pool))
            async with pool.acquire() as conn:
                exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
                assert await publish_pending(conn, exchange, 100) == []
            await _nothing_more(queue)
        finally:
            stop.set()
            await asyncio.wait_for(relaying, 20)
        relaying.result()


async def test_the_sweeping_relay_leaves_young_rows_but_takes_the_named_ones(
    pool: asyncpg.Pool[Any],
    ledger_config: Config,
    namespace: str,
    events_queue: tuple[Any, AbstractQueue],
) -> None:
    channel, queue = events_queue
    topology = Topology(namespace)
    policy = Policy.from_config(ledger_config)
    async with pool.acquire() as conn:
        old, young, named = [
            (await apply_batch(conn, [_incoming(f"R{n}")], policy)).outbox[0] for n in range(3)
        ]
        await conn.execute(
            "UPDATE events SET created_at = now() - interval '1 minute' WHERE seq = $1", old.seq
        )
        exchange = await channel.get_exchange(topology.events_exchange, ensure=False)
        taken = await publish_pending(conn, exchange, 100, older_than_s=30, named=[named.seq])
    assert sorted(taken) == sorted([old.seq, named.seq])
    assert sorted(await _received(queue, 2)) == sorted([old.id, named.id])
    await _nothing_more(queue)
    assert (await _outbox(pool)) == {old.id: True, named.id: True, young.id: False}


async def test_a_release_by_an_order_is_published_at_once_by_the_sweeping_relay(
    pool: asyncpg.Pool[Any],
    settings: Settings,
    ledger_config: Config,
    events_queue: tuple[Any, AbstractQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writers other than the ledger's batches (held callbacks released by an order, the
    admin API) name their rows in the notification: the relay takes them at once."""
    _, queue = events_queue
    # An hour: any young row the relay publishes here, it publishes because it was named.
    monkeypatch.setattr(relay, "SWEEP_AFTER_S", 3600.0)
    async with pool.acquire() as conn:
        # Written by a ledger that publishes itself (no notification), not yet marked.
        quiet = replace(Policy.from_config(ledger_config), notify_relay=False)
        (young,) = (await apply_batch(conn, [_incoming("N0")], quiet)).outbox
    stop = asyncio.Event()
    relaying = asyncio.create_task(run_relay(role_context("relay", settings, ledger_config, stop)))
    try:

        async def relay_listening() -> bool:
            async with pool.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE query LIKE 'LISTEN%' AND state = 'idle'"
                    )
                )

        await eventually(relay_listening)
        policy = Policy.from_config(ledger_config)  # notify_relay: as orders.py decides
        async with pool.acquire() as conn:
            (named,) = (await apply_batch(conn, [_incoming("N1")], policy)).outbox
        assert await _received(queue, 1) == [named.id]

        async def named_marked() -> bool:  # the relay commits its mark after the confirm
            return (await _outbox(pool))[named.id]

        await eventually(named_marked)
        # The young row nobody named is the ledger's to publish: the relay, though it just
        # connected (and may have missed notifications), left it alone.
        assert (await _outbox(pool)) == {young.id: False, named.id: True}
        await _nothing_more(queue)
    finally:
        stop.set()
        await asyncio.wait_for(relaying, 20)
    relaying.result()


def _incoming(transaction_id: str) -> Incoming:
    return Incoming.of(callback(S.SUCCEEDED, transaction_id))
