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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from contracts.config import Settings
from workers.webhooks import store
from workers.webhooks.messages import Job, Publisher

__all__ = ["SWEEP_BATCH", "Swept", "run_sweeper", "start_sweeper", "sweep_once"]

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
            event["body"], row["merchant"], row["round"], attempt, event["correlation_id"] or ""
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


async def run_sweeper(
    pool: asyncpg.Pool[Any],
    publisher: Callable[[], Publisher],
    stop: asyncio.Event,
    *,
    overdue_s: float,
    interval_s: float,
    recheck_s: float,
) -> None:
    """Sweep every ``interval_s`` until ``stop``.

    ``publisher()`` is the worker's current broker session's publisher (it raises while there
    is none). A failed sweep (Postgres or broker away) is logged and tried again next time:
    this loop is the safety net under the delay queues and must outlive their outages.
    """
    log.info("webhooks.sweeper_started", overdue_s=overdue_s, interval_s=interval_s)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        if stop.is_set():
            break
        try:
            current = publisher()
        except ConnectionRefusedError:
            continue  # between broker sessions: the runtime is reconnecting
        try:
            done = await sweep_once(pool, current, overdue_s=overdue_s, recheck_s=recheck_s)
        except Exception as exc:  # an outage or a bug: log it, sweep again
            log.warning("webhooks.sweep_failed", error=repr(exc))
            continue
        if done.published or done.failed:
            log.info(
                "webhooks.swept",
                published=done.published,
                skipped=done.skipped,
                failed=done.failed,
            )


def start_sweeper(
    pool: asyncpg.Pool[Any],
    publisher: Callable[[], Publisher],
    stop: asyncio.Event,
    settings: Settings,
) -> asyncio.Task[None] | None:
    """The sweeper as a task of the webhook worker role (None when turned off)."""
    if settings.webhook_overdue_s <= 0:
        return None
    return asyncio.create_task(
        run_sweeper(
            pool,
            publisher,
            stop,
            overdue_s=settings.webhook_overdue_s,
            interval_s=settings.webhook_sweep_interval_s,
            recheck_s=settings.webhook_overdue_recheck_s,
        ),
        name="webhooks-sweeper",
    )
