"""The overdue sweeper: re-publish retries the broker is late with, from Postgres.

A retry waits in a delay queue that dead-letters it back to ``<ns>.webhooks``. After a node
loss RabbitMQ 3.10's dead-letter worker can hold those messages until the node is back
(docs/operations.md, "Webhook retries through a node loss"), so the broker cannot be trusted
to be on time. Postgres knows when each attempt is due (``webhook_deliveries.next_attempt_at``),
so every ``interval_s`` each webhook worker runs ``sweep_once``:

1. one statement takes up to ``batch`` pending deliveries due more than ``overdue_s`` ago
   (``FOR UPDATE SKIP LOCKED``: several workers sweep at once without taking the same row,
   and a worker recording an attempt is never waited for), moves their ``next_attempt_at`` to
   ``now() + recheck_s`` and commits, so no other sweep takes them for that long;
2. it publishes, with confirms, the message the retry path would have published for the
   attempt that is due (same body and headers: merchant, round, attempt) straight to
   ``<ns>.webhooks``;
3. a delivery whose publish failed gets its old ``next_attempt_at`` back, so the next sweep
   tries again; a crash between 1 and 2 leaves it for ``recheck_s``.

The row lock is not held across the publish: a confirm can take seconds while the broker is
in trouble, and the workers' attempt records (one statement for many deliveries) would wait
behind it.

Which attempt is due: the last attempt row of the delivery's round says it. Finished (its
decision was ``retry``, or the delivery would not be pending) → the next one; unfinished (a
claim whose holder is in flight or died, see ``claims.py``) → that one again; none in a
round after 0 → attempt 1 of a replay. A delivery in round 0 with no attempt yet is left
alone: its first attempt comes from the events exchange and is never claimed.

Two messages for one attempt are then expected (this copy and the late one): whichever comes
second finds the attempt recorded and does nothing, or finds it claimed and goes round again
(``consumer``), so the merchant gets each planned attempt once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractChannel

from contracts.config import Settings
from contracts.events import CloudEvent
from contracts.topology import Topology
from runtime.broker import Session
from workers.webhooks import store
from workers.webhooks.messages import Job, Publisher

__all__ = ["SWEEP_BATCH", "Sweeper", "Swept", "sweep_once"]

log = structlog.get_logger(__name__)

SWEEP_BATCH = 500

_TAKE_OVERDUE = """
WITH due AS (
    SELECT event_id, merchant, next_attempt_at
    FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at < now() - make_interval(secs => $1)
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)
FROM due
WHERE d.event_id = due.event_id AND d.merchant = due.merchant
RETURNING d.event_id, d.merchant, d.round, due.next_attempt_at AS due_at,
          d.next_attempt_at AS marked_at,
          (SELECT CASE WHEN a.finished_at IS NULL THEN a.attempt ELSE a.attempt + 1 END
             FROM webhook_attempts a
            WHERE a.event_id = d.event_id AND a.merchant = d.merchant AND a.round = d.round
            ORDER BY a.attempt DESC LIMIT 1) AS attempt
"""

# Only where the mark is still ours: a worker that recorded the attempt meanwhile set its own.
_RESTORE = """
UPDATE webhook_deliveries d SET next_attempt_at = t.due_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
     AS t(event_id, merchant, due_at, marked_at)
WHERE d.event_id = t.event_id AND d.merchant = t.merchant AND d.next_attempt_at = t.marked_at
"""


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep did: re-published, skipped (nothing to publish), failed to publish."""

    published: int = 0
    skipped: int = 0
    failed: int = 0


async def sweep_once(
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    *,
    overdue_s: float,
    recheck_s: float,
    batch: int = SWEEP_BATCH,
) -> Swept:
    """One sweep (see the module docstring); returns what it did."""
    rows = await pool.fetch(_TAKE_OVERDUE, float(overdue_s), float(recheck_s), batch)
    if not rows:
        return Swept()
    events = await store.events_by_id(pool, list({row["event_id"] for row in rows}))
    jobs: list[tuple[asyncpg.Record, Job]] = []
    skipped = 0
    for row in rows:
        event = events.get(row["event_id"])
        attempt = row["attempt"] or (1 if row["round"] > 0 else None)
        if event is None or attempt is None:
            # Nothing to build the message from (the outbox keeps every event, so this is a
            # hand-made row); it stays marked and is looked at again after ``recheck_s``.
            log.warning(
                "webhooks.sweep_skipped",
                event_id=row["event_id"],
                merchant=row["merchant"],
                reason="event not in events" if event is None else "no attempt made yet",
            )
            skipped += 1
            continue
        job = Job(
            CloudEvent.from_dict(event["body"]),
            row["merchant"],
            row["round"],
            attempt,
            event["correlation_id"] or "",
        )
        jobs.append((row, job))

    results = await asyncio.gather(
        *(publisher.retry(job, job.attempt, 0) for _, job in jobs), return_exceptions=True
    )
    failed = [row for (row, _), result in zip(jobs, results, strict=True) if result is not None]
    for (row, job), result in zip(jobs, results, strict=True):
        if result is None:
            log.info(
                "webhooks.overdue_republished",
                event_id=job.event_id,
                merchant=job.merchant,
                round=job.round,
                attempt=job.attempt,
                due_at=_iso(row["due_at"]),
            )
    if failed:
        error = next(r for r in results if r is not None)
        log.warning("webhooks.sweep_publish_failed", count=len(failed), error=repr(error))
        await pool.execute(
            _RESTORE,
            [r["event_id"] for r in failed],
            [r["merchant"] for r in failed],
            [r["due_at"] for r in failed],
            [r["marked_at"] for r in failed],
        )
    return Swept(len(jobs) - len(failed), skipped, len(failed))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Sweeper:
    """``sweep_once`` every ``interval_s`` until ``stop``, on its own confirmed channel.

    Its own channel, not the worker's publisher: on RabbitMQ 3.10 a channel whose first
    publish to a quorum queue was refused while that queue's leader was away keeps being
    refused (docs/operations.md, "Publishers after a node loss"), so after a failed publish
    the sweeper drops its channel and opens a new one on the same connection for the next
    sweep, without ending the worker's broker session. A failed sweep (Postgres or broker
    away) is logged and tried again next time: this loop is the safety net under the delay
    queues and must outlive their outages.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        topology: Topology,
        stop: asyncio.Event,
        settings: Settings,
    ) -> None:
        self.pool = pool
        self.topology = topology
        self.stop = stop
        self.overdue_s = settings.webhook_overdue_s
        self.interval_s = settings.webhook_sweep_interval_s
        self.recheck_s = settings.webhook_overdue_recheck_s
        self.publish_timeout_s = settings.publish_timeout_s
        self._session: Session | None = None
        self._channel: AbstractChannel | None = None

    @classmethod
    def from_settings(
        cls, pool: asyncpg.Pool[Any], topology: Topology, stop: asyncio.Event, settings: Settings
    ) -> Sweeper | None:
        """The sweeper of a webhook worker role, or None when turned off (overdue_s 0)."""
        return cls(pool, topology, stop, settings) if settings.webhook_overdue_s > 0 else None

    def attach(self, session: Session) -> None:
        """Publish through this broker session from now on (the runtime's current one)."""
        self._session, self._channel = session, None

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.run(), name="webhooks-sweeper")

    async def run(self) -> None:
        log.info("webhooks.sweeper_started", overdue_s=self.overdue_s, interval_s=self.interval_s)
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=self.interval_s)
            if self.stop.is_set():
                break
            try:
                # Bounded as a whole: on a hung node even opening or closing a channel can
                # hang, and a stuck sweep must not stop the later ones.
                async with asyncio.timeout(self.publish_timeout_s + 10.0):
                    done = await self.sweep()
            except Exception as exc:  # an outage or a bug: log it, sweep again
                log.warning("webhooks.sweep_failed", error=repr(exc))
                await self._drop_channel()
                continue
            if done is not None and (done.published or done.failed):
                log.info(
                    "webhooks.swept",
                    published=done.published,
                    skipped=done.skipped,
                    failed=done.failed,
                )

    async def sweep(self) -> Swept | None:
        """One sweep now; None between broker sessions (the runtime is reconnecting)."""
        session = self._session
        if session is None or session.lost.is_set():
            return None
        if self._channel is None or self._channel.is_closed:
            self._channel = await session.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        publisher = Publisher(self._channel, self.topology, self.publish_timeout_s)
        done = await sweep_once(
            self.pool, publisher, overdue_s=self.overdue_s, recheck_s=self.recheck_s
        )
        if done.failed:
            await self._drop_channel()
        return done

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            # Bounded: closing a channel whose publishes are stuck on a hung node hangs too.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), timeout=1.0)
