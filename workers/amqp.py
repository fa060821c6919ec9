"""Broker connection and topology for operator commands and tests.

Long-running roles do not use this module: they run sessions through ``runtime.broker``,
which waits for a node for as long as it takes. A command wants the opposite: the first live
node of ``PAYHOOK_AMQP_URL`` now, or one line saying why not (``Unreachable``).
"""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from contracts.topology import Topology
from runtime.broker import declare
from runtime.errors import Unreachable, describe, is_broker_outage
from runtime.servers import server_name, split_urls

__all__ = ["connect", "declare_topology"]


async def connect(amqp_url: str, *, name: str) -> AbstractRobustConnection:
    """A robust connection to the first node that answers, named for ``rabbitmqctl``."""
    urls = split_urls(amqp_url)
    reasons: list[str] = []
    for url in urls:
        try:
            return await aio_pika.connect_robust(
                url, client_properties={"connection_name": name}, timeout=10
            )
        except Exception as exc:
            if not is_broker_outage(exc):
                raise
            reasons.append(f"{server_name(url)}: {describe(exc)}")
    raise Unreachable("RabbitMQ at " + ", ".join(server_name(u) for u in urls), "; ".join(reasons))


async def declare_topology(
    channel: AbstractChannel, topology: Topology, webhook_schedule: Sequence[float] = ()
) -> None:
    """Declare every exchange and queue payhook uses (see the table in DESIGN.md)."""
    await declare(channel, topology.declarations(webhook_schedule))
