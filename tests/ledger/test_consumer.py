"""The ledger worker on a real broker: poison, dead letters with a reason, replay, orders."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import orjson

from contracts.config import Config, Settings
from contracts.statuses import Status
from contracts.topology import Topology
from tests.roles import role_context
from workers import amqp
from workers.ledger.commands import HEADER_REPLAYED, replay_dead
from workers.ledger.consumer import HEADER_ERROR, run_ledger_worker

from .factory import callback
from .harness import (
    TcpProxy,
    Workers,
    eventually,
    ledger_states,
    publish_batch,
    publish_callbacks,
    start_workers,
)

S = Status


async def _dead_letters(channel: Any, topology: Topology, count: int) -> list[Any]:
    queue = await channel.get_queue(topology.ledger_dead_queue, ensure=False)
    found: list[Any] = []
    for _ in range(400):
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            found.append(message)
            if len(found) == count:
                return found
        else:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{len(found)} of {count} dead letters arrived")


async def test_poison_is_dead_lettered_and_the_rest_applied(
    pool: asyncpg.Pool[Any], settings: Settings, ledger_config: Config, namespace: str
) -> None:
    topology = Topology(namespace)
    async with contextlib.AsyncExitStack() as stack:
        workers = await start_workers(
            stack, count=1, settings=settings, config=ledger_config, pool=pool, topology=topology
        )
        connection = await amqp.connect(settings.amqp_url, name="ledger-test-publisher")
        stack.push_async_callback(connection.close)
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.callbacks_exchange, ensure=False)
        for body in (b"not json", b'{"schema_version": 99}'):
            await exchange.publish(
                aio_pika.Message(body, message_id="poison"), routing_key="callback.x.y"
            )
        await publish_callbacks(channel, topology, [callback(S.SUCCEEDED)])
        await workers.wait_handled(1)
        dead = await _dead_letters(channel, topology, 2)
        assert {m.body for m in dead} == {b'{"schema_version": 99}', b"not json"}
        for message in dead:
            assert message.headers["x-death"][0]["reason"] == "rejected"
            await message.ack()
    async with pool.acquire() as conn:
        assert (await ledger_states(conn))[("paysera", "main", "T1")]["state"] == "succeeded"


_BOOM = """
CREATE FUNCTION ledger_test_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.provider_status = 'boom' THEN RAISE EXCEPTION 'simulated ledger bug'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_test_boom BEFORE INSERT ON callbacks
    FOR EACH ROW EXECUTE FUNCTION ledger_test_boom();
"""
_FIX = "DROP TRIGGER ledger_test_boom ON callbacks; DROP FUNCTION ledger_test_boom();"


@contextlib.asynccontextmanager
async def _ledger_bug(pool: asyncpg.Pool[Any]) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A deployed bug: recording a callback with provider status ``boom`` fails. Yields the
    fix (deploying it twice is harmless); it is deployed at the end in any case."""
    async with pool.acquire() as conn:
        await conn.execute(_BOOM)
    fixed = False

    async def fix() -> None:
        nonlocal fixed
        if not fixed:
            async with pool.acquire() as conn:
                await conn.execute(_FIX)
            fixed = True

    try:
        yield fix
    finally:
        await fix()


async def _workers_and_channel(
    stack: contextlib.AsyncExitStack,
    count: int,
    pool: asyncpg.Pool[Any],
    settings: Settings,
    config: Config,
    topology: Topology,
) -> tuple[Workers, Any]:
    """``count`` ledger workers, and a confirm channel to publish and inspect queues with."""
    workers = await start_workers(
        stack, count=count, settings=settings, config=config, pool=pool, topology=topology
    )
    connection = await amqp.connect(settings.amqp_url, name="ledger-test-publisher")
    stack.push_async_callback(connection.close)
    return workers, await connection.channel(publisher_confirms=True)


async def test_failing_message_is_dead_lettered_with_its_reason_and_replayed(
    pool: asyncpg.Pool[Any], settings: Settings, ledger_config: Config, namespace: str
) -> None:
    topology = Topology(namespace)
    bad = callback(S.SUCCEEDED, "T-bad", provider_status="boom")
    good = callback(S.SUCCEEDED, "T-good")
    async with _ledger_bug(pool) as fix, contextlib.AsyncExitStack() as stack:
        workers, channel = await _workers_and_channel(
            stack, 2, pool, settings, ledger_config, topology
        )
        await publish_callbacks(channel, topology, [bad, good])
        await workers.wait_handled(1)
        # Every delivery fails alone; the last allowed one is dead-lettered by the worker.
        (dead,) = await _dead_letters(channel, topology, 1)
        assert dead.body == orjson.dumps(bad.to_json())
        assert "simulated ledger bug" in dead.headers[HEADER_ERROR]
        assert dead.headers["x-correlation-id"]
        await dead.nack(requeue=True)  # leave it for the operator

        await fix()  # the fix is deployed
        assert await replay_dead(settings) == 1
        await workers.wait_handled(2)
        async with pool.acquire() as conn:
            states = await ledger_states(conn)
            assert states[("paysera", "main", "T-bad")]["state"] == "succeeded"
            history = await conn.fetchval("SELECT count(*) FROM callbacks")
            assert history == 2
        queue = await channel.declare_queue(topology.ledger_dead_queue, passive=True)
        assert queue.declaration_result.message_count == 0
    assert HEADER_REPLAYED == "x-payhook-replayed"


async def test_batch_message_with_a_failing_callback_applies_the_rest_once(
    pool: asyncpg.Pool[Any], settings: Settings, ledger_config: Config, namespace: str
) -> None:
    """The ingress packs callbacks that arrive together into one message; one bad member must
    neither block its siblings nor make them count twice when the message comes back."""
    topology = Topology(namespace)
    members = [
        callback(S.SUCCEEDED, "T-b1"),
        callback(S.SUCCEEDED, "T-bad", provider_status="boom"),
        callback(S.SUCCEEDED, "T-b2"),
    ]
    async with _ledger_bug(pool) as fix, contextlib.AsyncExitStack() as stack:
        workers, channel = await _workers_and_channel(
            stack, 1, pool, settings, ledger_config, topology
        )
        await publish_batch(channel, topology, members)
        # Delivered delivery-limit times: the siblings apply on the first, then dedupe.
        (dead,) = await _dead_letters(channel, topology, 1)
        assert [d["transaction_id"] for d in orjson.loads(dead.body)] == ["T-b1", "T-bad", "T-b2"]
        assert "simulated ledger bug" in dead.headers[HEADER_ERROR]
        await dead.nack(requeue=True)
        async with pool.acquire() as conn:
            states = await ledger_states(conn)
            assert states[("paysera", "main", "T-b1")]["state"] == "succeeded"
            assert states[("paysera", "main", "T-b2")]["state"] == "succeeded"
            assert ("paysera", "main", "T-bad") not in states

        await fix()
        before = workers.handled()
        assert await replay_dead(settings) == 1
        await workers.wait_handled(before + 3)
        async with pool.acquire() as conn:
            states = await ledger_states(conn)
            assert states[("paysera", "main", "T-bad")]["state"] == "succeeded"
            assert await conn.fetchval("SELECT count(*) FROM callbacks") == 3
            assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 3


async def test_run_ledger_worker_with_orders_queue(
    pool: asyncpg.Pool[Any], settings: Settings, ledger_config: Config, namespace: str
) -> None:
    topology = Topology(namespace)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_ledger_worker(role_context("worker.ledger", settings, ledger_config, stop))
    )
    connection = await amqp.connect(settings.amqp_url, name="ledger-test-publisher")
    try:
        channel = await connection.channel(publisher_confirms=True)
        await amqp.declare_topology(channel, topology)
        order = {
            "merchant": "shop",
            "provider": "paysera",
            "account": "main",
            "order_id": "ORD-9",
            "amount": 500,
            "currency": "EUR",
            "test": False,
        }
        for body in (orjson.dumps(order), b"{not an order"):
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=topology.orders_queue,
            )

        async def registered() -> bool:
            async with pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT count(*) FROM order_expectations"))

        await eventually(registered)
        await publish_callbacks(
            channel,
            topology,
            [
                callback(S.SUCCEEDED, "T9", order_id="ORD-9", amount=500),
                callback(S.SUCCEEDED, "T10", order_id="ORD-9", amount=501),
            ],
        )

        async def applied() -> bool:
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM callbacks") == 2

        await eventually(applied)
        async with pool.acquire() as conn:
            outcomes = dict(
                await conn.fetch(
                    "SELECT p.transaction_id, c.outcome FROM callbacks c"
                    " JOIN payments p ON p.id = c.payment_id"
                )
            )
            assert outcomes == {"T9": "applied", "T10": "amount_mismatch"}

        # The invalid document was dead-lettered (not dropped) and can be replayed after a fix.
        async def dead_orders() -> int:
            # A fresh channel each time: a robust channel answers passive declares from a cache.
            fresh = await connection.channel()
            try:
                queue = await fresh.declare_queue(topology.orders_dead_queue, passive=True)
                return int(queue.declaration_result.message_count or 0)
            finally:
                await fresh.close()

        await eventually(lambda: _equals(dead_orders(), 1))
        assert await replay_dead(settings, queue="orders") == 1
        # Still invalid, so it dies again: back in the dead queue, marked as replayed once.
        await eventually(lambda: _equals(dead_orders(), 1))
        dead_queue = await channel.get_queue(topology.orders_dead_queue)
        again = await dead_queue.get(timeout=5)
        assert again is not None
        assert again.body == b"{not an order"
        assert (again.headers or {}).get(HEADER_REPLAYED) == 1
        await again.ack()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await connection.close()
    task.result()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_worker_resubscribes_after_the_broker_connection_breaks(
    pool: asyncpg.Pool[Any], settings: Settings, ledger_config: Config, namespace: str
) -> None:
    topology = Topology(namespace)
    target = urlsplit(settings.amqp_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    port = await proxy.start()
    proxied = urlunsplit(
        target._replace(
            netloc=f"{target.username}:{target.password}@127.0.0.1:{port}",
            query="reconnect_interval=0.2",
        )
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            connection = await amqp.connect(settings.amqp_url, name="ledger-test-publisher")
            stack.push_async_callback(connection.close)
            channel = await connection.channel(publisher_confirms=True)
            await amqp.declare_topology(channel, topology)
            workers = await start_workers(
                stack,
                count=1,
                settings=replace(settings, amqp_url=proxied),
                config=ledger_config,
                pool=pool,
                topology=topology,
            )
            await publish_callbacks(
                channel, topology, [callback(S.SUCCEEDED, f"A{n}") for n in range(5)]
            )
            await workers.wait_handled(5)
            proxy.cut()
            await asyncio.sleep(0.1)
            await publish_callbacks(
                channel, topology, [callback(S.SUCCEEDED, f"B{n}") for n in range(5)]
            )

            # Wait on the ledger, not on the handled count: acks in flight when the link
            # broke are lost, so the broker redelivers some A callbacks, and those count as
            # handled too (as duplicates) before every B callback has been applied.
            async def all_recorded() -> bool:
                async with pool.acquire() as conn:
                    return len(await ledger_states(conn)) == 10

            await eventually(all_recorded, patience=30)
            async with pool.acquire() as conn:
                states = await ledger_states(conn)
                entries = await conn.fetchval("SELECT count(*) FROM journal_entries")
            assert {s["paid"] for s in states.values()} == {1250}
            assert entries == 10  # redelivered A callbacks posted nothing twice
    finally:
        await proxy.close()
