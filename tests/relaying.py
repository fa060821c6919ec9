"""Events published exactly as payhook publishes them, for tests of what downstream sees.

``Outbox.emit`` writes the outbox row the ledger writes (``build_event`` and ``routing_key``
into an ``EventRow``, as ``workers.ledger.apply`` does) and runs the relay's
``publish_pending`` on it, on a test namespace whose topology ``workers.amqp`` declared. So a
change in payhook's event format or AMQP properties reaches these tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection

from contracts.callbacks import CallbackReceived
from contracts.events import build_event, encode_event, routing_key
from contracts.statuses import Status
from contracts.topology import Topology
from tests.ledger.factory import MERCHANT
from workers import amqp, db
from workers.ledger.store import EventRow, insert_events
from workers.relay import publish_pending


def outbox_row(
    callback: CallbackReceived,
    *,
    status: Status | None = None,
    ledger: Mapping[str, Any] | None = None,
) -> EventRow:
    """The ``events`` row the ledger writes for ``callback`` (``status``: a verdict's)."""
    effective = status or callback.status
    ledger = ledger if ledger is not None else {"payment_status": effective.value}
    event = build_event(callback, status=status, merchant=MERCHANT, ledger=ledger)
    return EventRow(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=callback.transaction_id,
        routing_key=routing_key(callback.kind, effective, callback.provider),
        provider=callback.provider,
        account=callback.account,
        merchant=MERCHANT,
        correlation_id=callback.correlation_id,
        body=encode_event(event),
    )


class Outbox:
    def __init__(
        self,
        conn: Any,
        connection: AbstractConnection,
        channel: AbstractChannel,
        exchange_name: str,
    ) -> None:
        self._conn = conn
        self.connection = connection
        self.channel = channel
        self.exchange_name = exchange_name

    async def emit(self, *rows: EventRow) -> list[dict[str, Any]]:
        """Write ``rows`` to the outbox and relay them; returns their events."""
        await insert_events(self._conn, rows)
        await self.relay()
        return [orjson.loads(row.body) for row in rows]

    async def republish(self, *event_ids: str) -> None:
        """Publish these events again, as a relay that crashed between confirm and commit."""
        await self._conn.execute(
            "UPDATE events SET published_at = NULL WHERE id = ANY($1::text[])", list(event_ids)
        )
        await self.relay()

    async def relay(self) -> None:
        exchange = await self.channel.get_exchange(self.exchange_name)
        while await publish_pending(self._conn, exchange, 100):
            pass

    async def queue_state(self, name: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of queue ``name``; (-1, 0) while it does not exist."""
        async with await self.connection.channel() as channel:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return -1, 0
            ok = queue.declaration_result
            return ok.message_count, ok.consumer_count


@asynccontextmanager
async def outbox(database_url: str, amqp_url: str, namespace: str) -> AsyncIterator[Outbox]:
    """payhook's outbox and relay on ``namespace`` (request the ``db`` fixture to clean up)."""
    topology = Topology(namespace)
    conn = await db.connect(database_url)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await amqp.declare_topology(channel, topology)
        yield Outbox(conn, connection, channel, topology.events_exchange)
    finally:
        await connection.close()
        await conn.close()
