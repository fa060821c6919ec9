"""The real-server fixtures do what conftest.py promises."""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING

import aio_pika
import aiormq
import asyncpg
import pytest

if TYPE_CHECKING:
    from .servers import BrokerControl, BrokerJanitor, LoopErrors


async def test_database_is_fresh_and_private(database_url: str, db: asyncpg.Connection) -> None:
    name = await db.fetchval("SELECT current_database()")
    assert name.startswith("payhook_test_")
    assert database_url.endswith(f"/{name}")


@pytest.mark.parametrize("run", [1, 2])
async def test_tables_are_truncated_between_tests(db: asyncpg.Connection, run: int) -> None:
    # Whichever run comes second sees the table the first one filled: empty, ids restarted.
    await db.execute("CREATE TABLE IF NOT EXISTS servers_probe (id serial PRIMARY KEY, run int)")
    new_id = await db.fetchval("INSERT INTO servers_probe (run) VALUES ($1) RETURNING id", run)
    assert new_id == 1
    assert await db.fetchval("SELECT count(*) FROM servers_probe") == 1
    if run == 2:
        await db.execute("DROP TABLE servers_probe")


async def test_janitor_deletes_namespace_queues(
    amqp_url: str, namespace: str, amqp_cleanup: BrokerJanitor
) -> None:
    extra = amqp_cleanup.register(f"{namespace}.webhooks.retry.1m")
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        for name in (f"{namespace}.ledger", extra):
            await channel.declare_queue(name, durable=True)
        await channel.declare_exchange(f"{namespace}.events", aio_pika.ExchangeType.TOPIC)

    await amqp_cleanup.cleanup()

    async with await aio_pika.connect(amqp_url) as connection:
        for name in (f"{namespace}.ledger", extra):
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(name, passive=True)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.get_exchange(f"{namespace}.events", ensure=True)


async def test_persistent_message_survives_broker_restart(
    amqp_url: str, namespace: str, amqp_cleanup: BrokerJanitor, broker_control: BrokerControl
) -> None:
    queue_name = amqp_cleanup.register(f"{namespace}.durable")
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()  # publisher confirms on
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(b"still here", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name,
        )

    await broker_control.restart()

    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        async with asyncio.timeout(20), queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    assert message.body == b"still here"
                break


async def test_unhandled_loop_exceptions_are_caught(loop_errors: LoopErrors) -> None:
    async def fail() -> None:
        raise RuntimeError("nobody awaits me")

    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.wait([task])
    del task
    gc.collect()

    assert [str(c.get("exception")) for c in loop_errors.contexts] == ["nobody awaits me"]
    loop_errors.clear()  # provoked on purpose; otherwise the fixture fails this test
