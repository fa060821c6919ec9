"""Publishing verified callbacks with publisher confirms.

The ingress answers a provider only after RabbitMQ confirmed the persistent, mandatory
publish. Many requests publish at once on one confirm channel; each awaits only its own
confirm, so throughput comes from confirms in flight, not from batching acks to providers.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from contracts.callbacks import CallbackReceived, encode_callback
from contracts.topology import HEADER_CORRELATION_ID, Topology

__all__ = ["CallbackPublisher", "PublishFailed"]


class PublishFailed(Exception):
    """The broker did not confirm: the provider must not get its acknowledgement."""


class CallbackPublisher:
    def __init__(self, amqp_url: str, topology: Topology, *, timeout_s: float) -> None:
        self._amqp_url = amqp_url
        self._topology = topology
        self._timeout_s = timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._amqp_url, client_properties={"connection_name": "payhook-ingress"}, timeout=10
        )
        # on_return_raises: a mandatory publish that no queue took fails instead of vanishing.
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._exchange = await _declare(self._channel, self._topology)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def ready(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def publish(self, callback: CallbackReceived) -> None:
        if self._exchange is None or not self.ready:
            raise PublishFailed("broker not connected")
        message = aio_pika.Message(
            body=encode_callback(callback),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=callback.id,
            correlation_id=callback.correlation_id or None,
            headers={HEADER_CORRELATION_ID: callback.correlation_id},
            type="payhook.callback.received",
        )
        key = self._topology.callback_routing_key(callback.provider, callback.account)
        try:
            # Returns Basic.Ack; a Nack/Reject or a mandatory return raises DeliveryError.
            async with asyncio.timeout(self._timeout_s):
                await self._exchange.publish(message, routing_key=key, mandatory=True)
        except Exception as exc:  # any failure means "not durably accepted"
            raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc


async def _declare(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """Declare what the ingress publishes into, so a callback is routable before any worker runs.

    Arguments must equal the workers' declarations (both come from ``contracts.topology``).
    """
    exchange = await channel.declare_exchange(
        topology.callbacks_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(
        topology.ledger_queue, durable=True, arguments=topology.ledger_queue_arguments()
    )
    await queue.bind(exchange, routing_key="callback.#")
    return exchange
