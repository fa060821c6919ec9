"""Publishing ``events`` rows (the outbox) to ``payhook.events``, for the ledger and the relay.

Two publishers share this: the ledger worker publishes the events of each batch right after
its commit (``ledger_publishes_events``, the default), and the relay publishes whatever is
still unpublished — everything when the ledger does not publish, otherwise only rows older
than ``SWEEP_AFTER_S`` (a ledger that crashed, lost its broker or its database between commit
and mark). Either way an event is published only after the transaction that wrote it
committed, and marked only after the broker confirmed it, so a crash in between publishes it
again with the same id (at least once), never loses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractExchange

from contracts.topology import HEADER_CORRELATION_ID
from runtime.broker import raw_channel
from runtime.errors import describe, is_database_outage
from runtime.publish_many import Outgoing, publish_many

__all__ = [
    "SWEEP_AFTER_S",
    "CommittedEvents",
    "OutboxEvent",
    "mark_published",
    "publish_events",
    "start_publish",
]

log = structlog.get_logger("ledger")

# How old an unpublished row must be before the relay takes it while the ledger publishes
# itself: far above a confirm round trip under load (milliseconds to a second), so the relay
# does not race the ledger for rows it is about to mark, and short enough that a ledger that
# died after its commit delays its events by seconds, not minutes.
SWEEP_AFTER_S = 10.0
PUBLISH_TIMEOUT_S = 30.0  # a whole batch's confirms
_MARK_EVERY_S = 0.2
_MARK_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """What is published of one ``events`` row."""

    seq: int
    id: str
    type: str
    routing_key: str
    correlation_id: str
    body: bytes  # the CloudEvent's JSON, published as is


async def start_publish(
    exchange: AbstractExchange, events: Sequence[OutboxEvent]
) -> list[asyncio.Future[object]]:
    """Write every event to the broker at once; returns their confirmations, in order.

    Straight on aiormq's channel, the whole batch in one socket write
    (``runtime.publish_many``): aio-pika's ``Exchange.publish`` awaits each frame's socket
    write while holding the channel's lock, so a batch went out one event-loop round trip per
    message, plus a ``Message`` object and a deadline each (a quarter of the relay's CPU in
    py-spy). The frames are queued before this returns, so batches started in some order
    reach the broker in that order.
    """
    # aio-pika's Exchange keeps its channel; the abstract interface does not declare it.
    channel = await raw_channel(cast(aio_pika.Exchange, exchange).channel)
    return await publish_many(
        channel,
        [Outgoing(exchange.name, e.routing_key, e.body, _properties(e)) for e in events],
        # mandatory: an event no queue would take (topology missing) must fail (the channel
        # raises on a return), not vanish.
        mandatory=True,
    )


async def publish_events(exchange: AbstractExchange, events: Sequence[OutboxEvent]) -> None:
    """Publish ``events`` with all confirms in flight at once; raises if any is not confirmed."""
    async with asyncio.timeout(PUBLISH_TIMEOUT_S):
        await asyncio.gather(*await start_publish(exchange, events))


async def mark_published(
    conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any], seqs: Sequence[int]
) -> None:
    """Mark the rows with these ``seq`` published (their confirms are in), outside any claim.

    The numbers go into the statement's text (integers, formatted here: nothing to inject),
    so Postgres plans it for this list each time and takes the ``events_unpublished``
    index. A prepared statement would settle on a generic plan, and one cached while
    ``events`` was young stays a sequential scan of the table as it grows (the relay's
    claim hit exactly that, 2.3 ms a batch at 10,000 events).
    """
    if not seqs:
        return
    numbers = ",".join(str(int(seq)) for seq in seqs)
    await conn.execute(
        "UPDATE events SET published_at = now() "  # noqa: S608 (integers, formatted above)
        f"WHERE seq = ANY('{{{numbers}}}'::bigint[]) AND published_at IS NULL"
    )


class CommittedEvents:
    """The ledger worker's publisher: events out right after their commit, marked once confirmed.

    ``spawn`` runs a coroutine as a task its owner waits for at shutdown (the confirms and the
    marks come after the batch has settled). ``exchange`` is None while there is no broker
    session: what could not be sent is left to the relay. Whatever fails here only delays
    events (unmarked rows are the relay's after ``SWEEP_AFTER_S``) or repeats them with the
    same ids (confirmed, not marked): the batch is committed and acked either way.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        marked: Callable[[int], None] | None = None,
    ) -> None:
        self.exchange: AbstractExchange | None = None
        self._pool = pool
        self._spawn = spawn
        self._marked = marked  # told how many were marked (a metric)
        self._confirmed: list[int] = []  # seq of events confirmed, not yet marked
        self._marking = False

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Send ``events`` now (their frames are queued before this returns, so batches
        published in commit order reach the broker in that order); confirm and mark later."""
        exchange = self.exchange
        if exchange is None or not events:
            return
        try:
            confirmations = await start_publish(exchange, events)
        except Exception as exc:
            log.warning("ledger.events_not_sent", reason=describe(exc), count=len(events))
            return
        self._spawn(self._confirm(events, confirmations))

    async def _confirm(
        self, events: Sequence[OutboxEvent], confirmations: Sequence[asyncio.Future[object]]
    ) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                outcomes = await asyncio.gather(*confirmations, return_exceptions=True)
        except TimeoutError:
            outcomes = [TimeoutError()] * len(events)
        # A confirm's result is the broker's Basic.Ack; a nack, a return or a closed channel
        # is an exception in its place.
        failed = [ok for ok in outcomes if isinstance(ok, BaseException)]
        if failed:
            log.warning("ledger.events_unconfirmed", reason=describe(failed[0]), count=len(failed))
        self._confirmed += [
            e.seq
            for e, ok in zip(events, outcomes, strict=True)
            if not isinstance(ok, BaseException)
        ]
        self._mark_soon(_MARK_EVERY_S)

    def _mark_soon(self, delay_s: float) -> None:
        if self._confirmed and not self._marking:
            self._marking = True
            self._spawn(self._mark(delay_s))

    async def _mark(self, delay_s: float) -> None:
        """Mark what was confirmed in the last ``delay_s``, in one statement.

        Marking is not on anyone's path (the relay leaves rows alone for ``SWEEP_AFTER_S``),
        so one UPDATE (and its commit) serves every batch confirmed meanwhile instead of one
        each (a mark per batch cost Postgres 100-200 us per callback at 500/s). A crash loses
        at most this interval's marks: those events are published once more by the relay,
        with the same ids. A database outage keeps them for another try.
        """
        try:
            await asyncio.sleep(delay_s)
        finally:
            seqs, self._confirmed, self._marking = self._confirmed, [], False
        try:
            async with self._pool.acquire() as conn:
                await mark_published(conn, seqs)
        except Exception as exc:
            if not is_database_outage(exc):  # a bug: the relay publishes them again
                log.exception("ledger.events_unmarked", count=len(seqs))
                return
            # Kept: unmarked after SWEEP_AFTER_S, the relay would publish them again.
            log.warning(
                "ledger.events_unmarked",
                reason=describe(exc),
                count=len(seqs),
                retry_in_s=_MARK_RETRY_S,
            )
            self._confirmed[:0] = seqs
            self._mark_soon(_MARK_RETRY_S)
            return
        if self._marked is not None:
            self._marked(len(seqs))


def _properties(event: OutboxEvent) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        delivery_mode=2,  # persistent
        content_type="application/cloudevents+json",
        message_id=event.id,
        correlation_id=event.correlation_id or None,
        headers={HEADER_CORRELATION_ID: event.correlation_id},
        message_type=event.type,
    )
