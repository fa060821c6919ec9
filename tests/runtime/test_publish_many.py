"""runtime.publish_many against a real broker: confirms, order, returns, nacks, a lost channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiormq
import pytest
from pamqp import commands as spec

from runtime.publish_many import Outgoing, publish_many


@asynccontextmanager
async def confirm_channel(amqp_url: str) -> AsyncIterator[aiormq.Channel]:
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, aiormq.Channel)
        yield channel
    finally:
        await connection.close()


def message(queue: str, n: int) -> Outgoing:
    return Outgoing(
        "",
        queue,
        f"body-{n}".encode(),
        spec.Basic.Properties(delivery_mode=2, message_id=f"m-{n}", headers={"n": n}),
    )


async def test_a_batch_goes_out_as_one_frame_group_and_every_message_is_confirmed(
    amqp_url: str, namespace: str
) -> None:
    queue = f"{namespace}.publish-many"
    async with confirm_channel(amqp_url) as channel:
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            puts = 0
            put = channel.write_queue.put

            async def counting_put(item: Any) -> None:
                nonlocal puts
                puts += 1
                await put(item)

            channel.write_queue.put = counting_put  # type: ignore[method-assign]
            confirmations = await publish_many(channel, [message(queue, n) for n in range(300)])
            channel.write_queue.put = put  # type: ignore[method-assign]
            assert puts == 1
            results = await asyncio.wait_for(asyncio.gather(*confirmations), 30)
            assert all(isinstance(r, spec.Basic.Ack) for r in results)
            # A later plain publish on the same channel gets the next tag, and is confirmed.
            after = await channel.basic_publish(b"after", routing_key=queue)
            assert isinstance(after, spec.Basic.Ack)

            got = []
            for _ in range(301):
                fetched = await channel.basic_get(queue, no_ack=True)
                got.append((fetched.body, fetched.header.properties.message_id))
            assert got[:300] == [(f"body-{n}".encode(), f"m-{n}") for n in range(300)]
            assert got[300][0] == b"after"
        finally:
            await channel.queue_delete(queue)


async def test_an_unroutable_mandatory_message_fails_alone(amqp_url: str, namespace: str) -> None:
    queue = f"{namespace}.publish-many-return"
    async with confirm_channel(amqp_url) as channel:
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            batch = [message(queue, 0), message(f"{namespace}.nowhere", 1), message(queue, 2)]
            confirmations = await publish_many(channel, batch)
            outcomes = await asyncio.wait_for(
                asyncio.gather(*confirmations, return_exceptions=True), 30
            )
            assert isinstance(outcomes[0], spec.Basic.Ack)
            assert isinstance(outcomes[1], aiormq.exceptions.PublishError)
            assert isinstance(outcomes[2], spec.Basic.Ack)
            assert not channel.is_closed
        finally:
            await channel.queue_delete(queue)


async def test_a_channel_the_broker_closes_fails_every_confirmation(
    amqp_url: str, namespace: str
) -> None:
    async with confirm_channel(amqp_url) as channel:
        batch = [
            Outgoing(f"{namespace}.no-such-exchange", "x", b"x", spec.Basic.Properties())
            for _ in range(5)
        ]
        confirmations = await publish_many(channel, batch)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*confirmations, return_exceptions=True), 30
        )
        assert all(isinstance(o, BaseException) for o in outcomes)
        assert channel.is_closed


async def test_a_channel_without_confirms_is_refused(amqp_url: str) -> None:
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        assert isinstance(channel, aiormq.Channel)
        with pytest.raises(ValueError, match="publisher confirms"):
            await publish_many(channel, [message("q", 0)])
    finally:
        await connection.close()
