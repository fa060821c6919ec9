"""Replaying deliveries: a new round for each (event, merchant), published with confirms.

Shared by ``payhook webhooks replay`` and the console. The body is read back from the
``events`` table, so the event id and payload are the ones the merchant may have seen. Each
batch starts its rounds in the transaction that publishes the messages: if publishing fails,
the rounds roll back and those deliveries stay as they were.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from contracts.config import Settings
from contracts.events import CloudEvent
from contracts.topology import Topology
from workers import amqp
from workers.webhooks import store
from workers.webhooks.messages import replay_message

__all__ = ["BATCH", "ReplayResult", "replay_deliveries"]

BATCH = 200


@dataclass(slots=True)
class ReplayResult:
    replayed: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # event not in `events`


async def replay_deliveries(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
    settings: Settings,
    pairs: Sequence[tuple[str, str]],
    on_batch: Callable[[int], Awaitable[None] | None] | None = None,
) -> ReplayResult:
    """Start a new round for each pair and publish it, batch by batch.

    ``on_batch(n)`` (a function or a coroutine function) is called after each batch with how
    many pairs it settled (replayed or missing), for a progress display.
    """
    result = ReplayResult()
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        return result
    topology = Topology(settings.amqp_namespace)
    connection = await amqp.connect(settings.amqp_url, name="payhook-webhooks-replay")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # Declared here too, so a replay before the first worker start still has its queue.
        await amqp.declare_topology(channel, topology)
        for start in range(0, len(pairs), BATCH):
            batch = pairs[start : start + BATCH]
            events = await store.events_by_id(conn, [e for e, _ in batch])
            result.missing.extend((e, m) for e, m in batch if e not in events)
            found = [(e, m) for e, m in batch if e in events]
            async with conn.transaction():
                rounds = await store.start_rounds(
                    conn, [(e, m, events[e]["type"]) for e, m in found]
                )
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            replay_message(
                                CloudEvent.from_dict(events[e]["body"]),
                                m,
                                rounds[(e, m)],
                                events[e]["correlation_id"],
                            ),
                            routing_key=topology.webhooks_queue,
                            mandatory=True,
                            timeout=settings.publish_timeout_s,
                        )
                        for e, m in found
                    )
                )
            result.replayed += len(found)
            if on_batch is not None:
                shown = on_batch(len(batch))
                if inspect.isawaitable(shown):
                    await shown
    finally:
        await connection.close()
    return result
