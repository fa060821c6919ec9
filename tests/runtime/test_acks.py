"""runtime.acks: one ``multiple`` ack for a settled prefix, never covering a message in flight."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from contracts.topology import Topology
from runtime import consume
from runtime.acks import ChannelAcks
from runtime.broker import declare
from runtime.errors import RetryLater


class FakeChannel:
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.frames.append(("nack", tag, False))


class FakeMessage:
    def __init__(self, channel: FakeChannel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag

    async def ack(self) -> None:
        await self.channel.basic_ack(self.delivery_tag)

    async def nack(self, requeue: bool = True) -> None:
        await self.channel.basic_nack(self.delivery_tag, requeue)

    async def reject(self, requeue: bool = False) -> None:
        await self.channel.basic_nack(self.delivery_tag, requeue)


def setup(count: int, order: list[int] | None = None) -> tuple[FakeChannel, ChannelAcks, list[Any]]:
    """``count`` deliveries, registered in ``order`` (tags; default 1, 2, 3 …)."""
    channel = FakeChannel()
    acks = ChannelAcks(cast(Any, channel))
    messages = [FakeMessage(channel, tag) for tag in range(1, count + 1)]
    for tag in order or range(1, count + 1):
        acks.received(cast(Any, messages[tag - 1]))
    return channel, acks, messages


def covered(frames: list[tuple[str, int, bool]], everything: int) -> set[int]:
    """Tags settled by the frames (a multiple ack covers every tag not settled before)."""
    done: set[int] = set()
    for _, tag, multiple in frames:
        if multiple:
            done |= set(range(1, tag + 1))
        else:
            done.add(tag)
    return done & set(range(1, everything + 1))


async def test_acks_of_one_turn_share_one_multiple_ack() -> None:
    channel, acks, messages = setup(5)
    await asyncio.gather(*(acks.ack(m) for m in reversed(messages)))
    assert channel.frames == [("ack", 5, True)]


async def test_a_message_in_flight_is_never_covered() -> None:
    channel, acks, messages = setup(5)
    # 2 is still being handled (a hanging merchant): 1 by multiple, 3 to 5 one by one.
    await asyncio.gather(*(acks.ack(m) for m in messages if m.delivery_tag != 2))
    assert ("ack", 1, True) in channel.frames
    assert 2 not in covered(channel.frames, 5)
    assert covered(channel.frames, 5) == {1, 3, 4, 5}
    await acks.ack(messages[1])
    assert channel.frames[-1] == ("ack", 2, True)


async def test_nacked_messages_are_skipped_and_never_named() -> None:
    channel, acks, messages = setup(4)
    await acks.nack(messages[3], requeue=True)  # the last one: a multiple ack may not name it
    await acks.nack(messages[1], requeue=True)
    await asyncio.gather(acks.ack(messages[0]), acks.ack(messages[2]))
    acked = [frame for frame in channel.frames if frame[0] == "ack"]
    assert acked == [("ack", 3, True)]
    # The nacks went out before the multiple ack that spans them.
    assert channel.frames.index(("nack", 2, False)) < channel.frames.index(("ack", 3, True))


async def test_a_later_turn_continues_where_the_last_stopped() -> None:
    channel, acks, messages = setup(6)
    await asyncio.gather(*(acks.ack(m) for m in messages[:3]))
    await asyncio.gather(*(acks.ack(m) for m in messages[3:]))
    assert channel.frames == [("ack", 3, True), ("ack", 6, True)]
    assert acks.frames == 2


async def test_registration_out_of_order_never_covers_a_lower_tag_in_flight() -> None:
    # Whatever order the consumer's tasks register deliveries in: tag 3 before tag 2.
    channel, acks, messages = setup(6, order=[1, 3, 2, 4, 5, 6])
    await asyncio.gather(acks.ack(messages[0]), acks.ack(messages[2]), acks.ack(messages[3]))
    assert 2 not in covered(channel.frames, 4)
    await acks.ack(messages[1])
    assert covered(channel.frames, 4) == {1, 2, 3, 4}
    # The run passed 3 and 4 (acked one by one before): the next acks share one again.
    await asyncio.gather(acks.ack(messages[4]), acks.ack(messages[5]))
    assert channel.frames[-1] == ("ack", 6, True)
    assert acks.frames == len(channel.frames) == 5


async def test_a_tag_not_registered_yet_stops_the_run() -> None:
    channel, acks, messages = setup(3, order=[1, 3])  # 2 delivered, its task not run yet
    await asyncio.gather(acks.ack(messages[0]), acks.ack(messages[2]))
    assert channel.frames == [("ack", 1, True), ("ack", 3, False)]
    acks.received(messages[1])
    await acks.ack(messages[1])
    assert channel.frames[-1] == ("ack", 2, True)


async def test_against_the_broker_nothing_in_flight_is_acked(amqp_url: str, namespace: str) -> None:
    """Many deliveries finishing in a shuffled order, some requeued, some held to the end:
    the channel stays open (no unknown tag), and exactly the held ones come back."""
    topology = Topology(namespace)
    queue_name, count, held = topology.orders_queue, 600, {17, 250, 599}
    rng = random.Random(12)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare(channel, topology.declarations())
        for n in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(str(n).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue_name,
            )
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=200)
        acks = ChannelAcks(await consumer.get_underlay_channel())
        stop, lost, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
        done: set[int] = set()
        retried: set[int] = set()
        all_done = asyncio.Event()

        async def handler(message: AbstractIncomingMessage) -> None:
            n = int(message.body)
            for _ in range(rng.randrange(20)):
                await asyncio.sleep(0)  # finish in a shuffled order
            if n in held:
                await release.wait()
            if n % 50 == 3 and n not in retried:
                retried.add(n)
                raise RetryLater("once more", 0.0)  # a nack among the acks
            done.add(n)
            if len(done) == count - len(held):
                all_done.set()

        tasks: set[asyncio.Task[None]] = set()

        async def on_message(message: AbstractIncomingMessage) -> None:
            acks.received(message)
            task = asyncio.create_task(
                consume.handle_message(message, handler, stop=stop, lost=lost, settler=acks)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        queue = await consumer.get_queue(queue_name, ensure=False)
        await queue.consume(on_message)
        await asyncio.wait_for(all_done.wait(), 60)
        await asyncio.sleep(0.2)  # let the last acks go out
        assert not consumer.is_closed
        assert acks.frames < count - len(held)  # shared acks, not one per message
        await consumer.close()  # the held ones were never acked: back to the queue
        for task in list(tasks):
            task.cancel()

        async def back() -> bool:
            declared = await channel.declare_queue(queue_name, passive=True)
            return declared.declaration_result.message_count == len(held)

        async with asyncio.timeout(20):
            while not await back():  # noqa: ASYNC110 - the broker has no event to wait on
                await asyncio.sleep(0.05)
    finally:
        await connection.close()
