"""What the console asks RabbitMQ: queue depths, and a look at dead letters without taking them.

One connection per admin process, opened on first use and again after it was lost. Every
question gets a fresh channel, closed afterwards: a passive declare of a missing queue closes
its channel (404), and a robust channel would remember passive declares and replay them after
a reconnect, so neither kind of channel is kept.

Peeking takes up to N messages with ``basic.get`` (unacknowledged), reads them, and gives each
back with ``nack(requeue=True)``; if anything goes wrong first, closing the channel gives them
back too. Nothing is lost, but a message given back may come back at another position, and
its ``x-delivery-count`` grows (payhook's dead queues have no delivery limit, so that is all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from runtime.errors import describe, is_broker_outage
from runtime.servers import split_urls

__all__ = ["BrokerProbe", "PeekedMessage", "QueueDepth"]

_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class QueueDepth:
    name: str
    messages: int | None  # None: see ``error``
    error: str | None = None  # "no such queue", "broker unavailable: …"


@dataclass(frozen=True, slots=True)
class PeekedMessage:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    correlation_id: str | None
    timestamp: datetime | None
    redelivered: bool


class BrokerProbe:
    def __init__(self, amqp_url: str, name: str = "payhook-console") -> None:
        self._urls = split_urls(amqp_url)
        self._name = name
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> AbstractConnection:
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return self._connection
            last: Exception | None = None
            for url in self._urls:
                try:
                    self._connection = await aio_pika.connect(
                        url, client_properties={"connection_name": self._name}, timeout=_TIMEOUT_S
                    )
                    return self._connection
                except Exception as exc:
                    if not is_broker_outage(exc):
                        raise
                    last = exc
            assert last is not None
            raise last

    async def depths(self, names: Sequence[str]) -> list[QueueDepth]:
        """Messages ready in each queue (passive declares; a missing queue is reported)."""
        try:
            connection = await self._connect()
        except Exception as exc:
            if not is_broker_outage(exc):
                raise
            return [QueueDepth(n, None, f"broker unavailable: {describe(exc)}") for n in names]
        out: list[QueueDepth] = []
        for name in names:
            try:
                async with asyncio.timeout(_TIMEOUT_S):
                    channel = await connection.channel()
                    try:
                        queue = await channel.declare_queue(name, passive=True)
                        count = queue.declaration_result.message_count or 0
                    finally:
                        if not channel.is_closed:
                            await channel.close()
                out.append(QueueDepth(name, count))
            except aiormq.exceptions.ChannelNotFoundEntity:
                out.append(QueueDepth(name, None, "no such queue"))
            except Exception as exc:
                if not is_broker_outage(exc) and not isinstance(exc, TimeoutError):
                    raise
                out.append(QueueDepth(name, None, f"broker unavailable: {describe(exc)}"))
        return out

    async def peek(self, name: str, limit: int) -> tuple[int, list[PeekedMessage]]:
        """(messages in the queue, the first ``limit`` of them), all left in the queue."""
        connection = await self._connect()
        channel = await connection.channel()
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        try:
            async with asyncio.timeout(_TIMEOUT_S * 2):
                queue = await channel.declare_queue(name, passive=True)
                count = queue.declaration_result.message_count or 0
                for _ in range(min(limit, count)):
                    message = await queue.get(no_ack=False, fail=False, timeout=_TIMEOUT_S)
                    if message is None:
                        break
                    held.append(message)
                peeked = [
                    PeekedMessage(
                        body=m.body,
                        headers=dict(m.headers or {}),
                        message_id=m.message_id,
                        correlation_id=m.correlation_id,
                        timestamp=m.timestamp,
                        redelivered=bool(m.redelivered),
                    )
                    for m in held
                ]
                for message in held:
                    await message.nack(requeue=True)
                if held:
                    await _until_back(channel, name, count)
                held.clear()
            return count, peeked
        finally:
            # Closing the channel gives back whatever is still held.
            if not channel.is_closed:
                await channel.close()

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = None


# A quorum queue applies a requeue asynchronously: right after the nacks, its count can still
# miss the messages handed back (seen on a loaded 2-core machine: 0 or 2 of 4 for a moment),
# and a replay started then moved fewer than asked. The peek returns once they are back.
_BACK_WITHIN_S = 2.0
_BACK_POLL_S = 0.05


async def _until_back(channel: aio_pika.abc.AbstractChannel, name: str, count: int) -> None:
    """Wait (bounded) until ``name`` holds ``count`` messages again after a peek."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _BACK_WITHIN_S
    while loop.time() < deadline:
        queue = await channel.declare_queue(name, passive=True)
        if (queue.declaration_result.message_count or 0) >= count:
            return
        await asyncio.sleep(_BACK_POLL_S)  # the broker tells no one: polling it is
