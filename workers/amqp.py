"""Broker connection and topology for the workers (DESIGN.md, "Broker topology").

Every worker declares the whole topology on start, so the processes can start in any order.
Declarations are idempotent as long as the arguments match, which is why they come from
``contracts.topology``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from contracts.topology import Topology

__all__ = ["connect", "declare_topology", "retry_queue_arguments"]


async def connect(amqp_url: str, *, name: str) -> AbstractRobustConnection:
    """A robust connection (reconnects and re-declares by itself), named for ``rabbitmqctl``."""
    return await aio_pika.connect_robust(
        amqp_url, client_properties={"connection_name": name}, timeout=10
    )


def retry_queue_arguments(topology: Topology, delay_seconds: float) -> dict[str, Any]:
    """A delay queue: messages sit for ``delay_seconds`` then dead-letter back to the work queue.

    Quorum with at-least-once dead-lettering, not classic: a classic queue dead-letters
    at-most-once, and a message whose TTL ran out while the broker was down is dead-lettered
    during recovery, before the (quorum) work queue is available again, and silently dropped
    (seen with RabbitMQ 3.10 in tests/webhooks/test_crash.py). At-least-once keeps it until the
    work queue confirms it; that strategy requires ``reject-publish`` overflow. Quorum queues
    expire only at the head, which is exact here since the TTL is uniform per queue.
    """
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": int(delay_seconds * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": topology.webhooks_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_topology(
    channel: AbstractChannel, topology: Topology, webhook_schedule: Sequence[float] = ()
) -> None:
    """Declare every exchange and queue payhook uses (see the table in DESIGN.md)."""
    callbacks = await channel.declare_exchange(
        topology.callbacks_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(
        topology.ledger_dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    ledger = await channel.declare_queue(
        topology.ledger_queue, durable=True, arguments=topology.ledger_queue_arguments()
    )
    await ledger.bind(callbacks, routing_key="callback.#")
    ledger_dead = await channel.declare_queue(
        topology.ledger_dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await ledger_dead.bind(dead, routing_key="#")

    events = await channel.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    webhooks = await channel.declare_queue(
        topology.webhooks_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await webhooks.bind(events, routing_key="#")
    await channel.declare_queue(
        topology.webhooks_dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    # Step 0 of a schedule is "now": it needs no delay queue.
    for delay in sorted({d for d in webhook_schedule if d > 0}):
        await channel.declare_queue(
            topology.webhooks_retry_queue(delay),
            durable=True,
            arguments=retry_queue_arguments(topology, delay),
        )
    await channel.declare_queue(
        topology.orders_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
