"""``runtime.consume``: a handler's outcome decides ack, requeue or dead-letter (real broker).

The queue is payhook's own ``<ns>.orders`` (a quorum queue with a delivery limit and a
dead-letter queue), so these tests also prove that a message can never loop for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from contracts.topology import DELIVERY_LIMIT, Topology
from runtime import consume
from runtime.broker import declare
from runtime.errors import PermanentFailure, RetryLater

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


@pytest.fixture
async def channel(amqp_url: str, namespace: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare(channel, Topology(namespace).declarations())
        yield channel
    finally:
        await connection.close()


@asynccontextmanager
async def consuming(
    channel: AbstractChannel, queue_name: str, handler: Handler
) -> AsyncIterator[None]:
    stop, lost = asyncio.Event(), asyncio.Event()
    queue = await channel.get_queue(queue_name, ensure=False)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await consume.handle_message(message, handler, stop=stop, lost=lost)

    tag = await queue.consume(on_message)
    try:
        yield
    finally:
        stop.set()
        await queue.cancel(tag)


async def publish(channel: AbstractChannel, queue: str, body: bytes) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
    )


async def depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    return int(count or 0)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the broker has no event to wait on
            await asyncio.sleep(0.05)


async def test_a_handler_that_returns_acks(channel: AbstractChannel, namespace: str) -> None:
    topology = Topology(namespace)
    seen: list[bytes] = []
    done = asyncio.Event()

    async def handler(message: AbstractIncomingMessage) -> None:
        seen.append(message.body)
        done.set()

    async with consuming(channel, topology.orders_queue, handler):
        await publish(channel, topology.orders_queue, b"one")
        await asyncio.wait_for(done.wait(), 20)
    await eventually(lambda: _is(depth(channel, topology.orders_queue), 0))
    assert seen == [b"one"]
    assert await depth(channel, topology.orders_dead_queue) == 0


async def test_a_permanent_failure_is_dead_lettered_at_once(
    channel: AbstractChannel, namespace: str
) -> None:
    topology = Topology(namespace)
    calls = 0

    async def handler(message: AbstractIncomingMessage) -> None:
        nonlocal calls
        calls += 1
        raise PermanentFailure("not an order")

    async with consuming(channel, topology.orders_queue, handler):
        await publish(channel, topology.orders_queue, b"garbage")
        await eventually(lambda: _is(depth(channel, topology.orders_dead_queue), 1))
    assert calls == 1
    dead = await (await channel.get_queue(topology.orders_dead_queue)).get(timeout=5)
    assert dead is not None
    assert dead.body == b"garbage"
    await dead.ack()


async def test_an_outage_is_waited_out_without_counting_a_delivery(
    channel: AbstractChannel, namespace: str
) -> None:
    """The handler runs again on the same delivery: no redelivery, no delivery-limit cost."""
    topology = Topology(namespace)
    deliveries: list[Any] = []
    done = asyncio.Event()

    async def handler(message: AbstractIncomingMessage) -> None:
        deliveries.append((message.delivery_tag, message.redelivered))
        if len(deliveries) < 3:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        done.set()

    async with consuming(channel, topology.orders_queue, handler):
        await publish(channel, topology.orders_queue, b"order")
        await asyncio.wait_for(done.wait(), 30)
    assert len(deliveries) == 3
    assert len({tag for tag, _ in deliveries}) == 1  # the same delivery, held throughout
    assert not any(redelivered for _, redelivered in deliveries)
    await eventually(lambda: _is(depth(channel, topology.orders_queue), 0))
    assert await depth(channel, topology.orders_dead_queue) == 0


async def test_retry_later_requeues(channel: AbstractChannel, namespace: str) -> None:
    topology = Topology(namespace)
    redelivered: list[bool] = []
    done = asyncio.Event()

    async def handler(message: AbstractIncomingMessage) -> None:
        redelivered.append(message.redelivered)
        if len(redelivered) == 1:
            raise RetryLater("merchant asked to wait", delay_s=0.05)
        done.set()

    async with consuming(channel, topology.orders_queue, handler):
        await publish(channel, topology.orders_queue, b"order")
        await asyncio.wait_for(done.wait(), 30)
    assert redelivered == [False, True]


async def test_a_bug_requeues_until_the_delivery_limit_dead_letters_it(
    channel: AbstractChannel, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poison message cannot loop for ever: the queue's limit moves it to the DLQ."""
    monkeypatch.setattr(consume, "BUG_REQUEUE_PAUSE_S", 0.01)
    topology = Topology(namespace)
    calls = 0

    async def handler(message: AbstractIncomingMessage) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug")

    async with consuming(channel, topology.orders_queue, handler):
        await publish(channel, topology.orders_queue, b"poison")
        await eventually(lambda: _is(depth(channel, topology.orders_dead_queue), 1), within=60)
    assert DELIVERY_LIMIT <= calls <= DELIVERY_LIMIT + 1
    assert await depth(channel, topology.orders_queue) == 0


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
