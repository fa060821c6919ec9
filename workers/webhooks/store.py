"""SQL for webhook delivery: deliveries, attempts, endpoint state (migration 050).

An attempt row is keyed by (event, merchant, round, attempt) and doubles as the idempotency
record: a redelivered or duplicated message finds the attempt it carries already finished and
only completes what was decided then (publishing the retry), instead of calling the merchant
again. ``round`` is bumped by every replay; messages of an older round are stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from workers.webhooks.retry import Action, Outcome, Plan

__all__ = [
    "AttemptKey",
    "AttemptRecord",
    "DeliveryState",
    "Executor",
    "FinishedAttempt",
    "attempts_for_event",
    "deliveries_for_events",
    "deliveries_needing_attention",
    "disable_endpoint",
    "enable_endpoint",
    "events_by_id",
    "finish_attempt",
    "get_attempt",
    "mark_followed_up",
    "open_delivery",
    "park_delivery",
    "start_attempt",
    "start_rounds",
]

# A pool or a connection: both have fetch/fetchrow/execute.
Executor: TypeAlias = "asyncpg.Pool[Any] | asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


@dataclass(frozen=True, slots=True)
class AttemptKey:
    event_id: str
    merchant: str
    round: int
    attempt: int


@dataclass(frozen=True, slots=True)
class DeliveryState:
    round: int  # the delivery's current round (a message with a lower one is stale)
    state: str
    disabled_reason: str | None  # the endpoint is disabled when set


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    """What one attempt produced, ready to be written."""

    outcome: Outcome
    status_code: int | None
    error_class: str | None
    response_body: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    finished: bool
    plan: Plan | None
    followed_up: bool


_OPEN_DELIVERY = """
WITH delivery AS (
    INSERT INTO webhook_deliveries AS d (event_id, merchant, event_type, round)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (event_id, merchant) DO UPDATE
        SET round = GREATEST(d.round, EXCLUDED.round),
            state = CASE WHEN EXCLUDED.round > d.round THEN 'pending' ELSE d.state END,
            updated_at = CASE WHEN EXCLUDED.round > d.round THEN now() ELSE d.updated_at END
    RETURNING d.round, d.state
)
SELECT delivery.round, delivery.state,
       (SELECT disabled_reason FROM webhook_endpoints
         WHERE merchant = $2 AND disabled_at IS NOT NULL) AS disabled_reason
FROM delivery
"""


async def open_delivery(
    db: Executor, event_id: str, merchant: str, event_type: str, round_: int
) -> DeliveryState:
    """Create the delivery row if new (or move it to a newer round); report its state."""
    row = await db.fetchrow(_OPEN_DELIVERY, event_id, merchant, event_type, round_)
    assert row is not None
    return DeliveryState(row["round"], row["state"], row["disabled_reason"])


async def get_attempt(db: Executor, key: AttemptKey) -> AttemptRecord | None:
    row = await db.fetchrow(
        "SELECT finished_at, next_action, next_delay_s, followed_up_at FROM webhook_attempts"
        " WHERE event_id = $1 AND merchant = $2 AND round = $3 AND attempt = $4",
        key.event_id,
        key.merchant,
        key.round,
        key.attempt,
    )
    if row is None:
        return None
    plan = None
    if row["next_action"] is not None:
        action = Action(row["next_action"])
        delay = float(row["next_delay_s"] or 0.0)
        plan = Plan(action, delay, key.attempt + 1 if action is Action.RETRY else None)
    return AttemptRecord(row["finished_at"] is not None, plan, row["followed_up_at"] is not None)


async def start_attempt(db: Executor, key: AttemptKey) -> None:
    """Claim the attempt (or take over one a dead worker left unfinished)."""
    await db.execute(
        "INSERT INTO webhook_attempts (event_id, merchant, round, attempt) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (event_id, merchant, round, attempt) DO UPDATE"
        " SET started_at = now(), finished_at = NULL",
        key.event_id,
        key.merchant,
        key.round,
        key.attempt,
    )


_FINISH_ATTEMPT = """
UPDATE webhook_attempts
SET finished_at = now(), duration_ms = $5, status_code = $6, error_class = $7,
    response_body = $8, next_action = $9, next_delay_s = $10
WHERE event_id = $1 AND merchant = $2 AND round = $3 AND attempt = $4
"""

_FINISH_DELIVERY = """
UPDATE webhook_deliveries
SET attempts = attempts + 1,
    last_attempt_at = now(),
    last_status = $3,
    last_error = $4,
    state = $5,
    delivered_at = CASE WHEN $5 = 'delivered' THEN now() ELSE delivered_at END,
    next_attempt_at = CASE WHEN $5 = 'pending' THEN now() + make_interval(secs => $6)
                           ELSE NULL END,
    updated_at = now()
WHERE event_id = $1 AND merchant = $2 AND round = $7
"""

_STATE_AFTER = {
    Action.DONE: "delivered",
    Action.RETRY: "pending",
    Action.DEAD: "failed",
    Action.PARK: "parked",
}


async def finish_attempt(
    pool: asyncpg.Pool[Any], key: AttemptKey, result: FinishedAttempt, plan: Plan
) -> None:
    """Record the attempt and the decision taken after it, in one transaction.

    A 410 also disables the endpoint here, so no later delivery can slip past the decision.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            _FINISH_ATTEMPT,
            key.event_id,
            key.merchant,
            key.round,
            key.attempt,
            result.duration_ms,
            result.status_code,
            result.error_class,
            result.response_body,
            plan.action.value,
            plan.delay,
        )
        await conn.execute(
            _FINISH_DELIVERY,
            key.event_id,
            key.merchant,
            result.status_code,
            result.error_class,
            _STATE_AFTER[plan.action],
            plan.delay,
            key.round,
        )
        if result.outcome is Outcome.GONE:
            await disable_endpoint(conn, key.merchant, "410 Gone")


async def mark_followed_up(db: Executor, key: AttemptKey) -> None:
    await db.execute(
        "UPDATE webhook_attempts SET followed_up_at = now()"
        " WHERE event_id = $1 AND merchant = $2 AND round = $3 AND attempt = $4",
        key.event_id,
        key.merchant,
        key.round,
        key.attempt,
    )


async def park_delivery(
    db: Executor, event_id: str, merchant: str, round_: int, reason: str
) -> None:
    await db.execute(
        "UPDATE webhook_deliveries SET state = 'parked', last_error = $4, next_attempt_at = NULL,"
        " updated_at = now() WHERE event_id = $1 AND merchant = $2 AND round = $3",
        event_id,
        merchant,
        round_,
        reason,
    )


async def disable_endpoint(db: Executor, merchant: str, reason: str) -> int:
    """Disable deliveries to ``merchant``; its pending deliveries become parked (kept).

    Returns how many deliveries were parked. Their queued messages, when they come back from
    the delay queues, find the endpoint disabled and go to the dead queue.
    """
    await db.execute(
        "INSERT INTO webhook_endpoints (merchant, disabled_at, disabled_reason)"
        " VALUES ($1, now(), $2)"
        " ON CONFLICT (merchant) DO UPDATE SET disabled_at = now(), disabled_reason = $2,"
        " updated_at = now()",
        merchant,
        reason,
    )
    parked = await db.fetch(
        "UPDATE webhook_deliveries SET state = 'parked', last_error = $2, next_attempt_at = NULL,"
        " updated_at = now() WHERE merchant = $1 AND state = 'pending' RETURNING 1",
        merchant,
        f"endpoint disabled: {reason}",
    )
    return len(parked)


async def enable_endpoint(db: Executor, merchant: str) -> bool:
    """Enable ``merchant`` again; returns whether it was disabled."""
    row = await db.fetchrow(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL,"
        " updated_at = now() WHERE merchant = $1 AND disabled_at IS NOT NULL RETURNING 1",
        merchant,
    )
    return row is not None


async def deliveries_needing_attention(
    db: Executor,
    *,
    merchant: str | None,
    since: datetime | None,
    states: Sequence[str] = ("failed", "parked"),
    include_failing: bool = False,
    limit: int | None = None,
) -> list[asyncpg.Record]:
    """Failed and parked deliveries (and, with ``include_failing``, pending ones that failed)."""
    return await db.fetch(
        "SELECT event_id, merchant, event_type, state, round, attempts, last_attempt_at,"
        " last_status, last_error, next_attempt_at, updated_at"
        " FROM webhook_deliveries"
        " WHERE (state = ANY($1::text[]) OR ($2 AND state = 'pending' AND attempts > 0))"
        " AND ($3::text IS NULL OR merchant = $3)"
        " AND ($4::timestamptz IS NULL OR updated_at >= $4)"
        " ORDER BY updated_at, event_id, merchant"
        " LIMIT $5",
        list(states),
        include_failing,
        merchant,
        since,
        limit,
    )


async def attempts_for_event(db: Executor, event_id: str) -> list[asyncpg.Record]:
    """Every attempt for ``event_id``, every merchant and round, oldest first."""
    return await db.fetch(
        "SELECT merchant, round, attempt, started_at, finished_at, duration_ms, status_code,"
        " error_class, response_body, next_action, next_delay_s"
        " FROM webhook_attempts WHERE event_id = $1"
        " ORDER BY started_at, merchant, round, attempt",
        event_id,
    )


async def deliveries_for_events(db: Executor, event_ids: Sequence[str]) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT event_id, merchant, state, round, attempts, delivered_at"
        " FROM webhook_deliveries WHERE event_id = ANY($1::text[])"
        " ORDER BY event_id, merchant",
        list(event_ids),
    )


async def events_by_id(db: Executor, event_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """``events`` rows (the outbox keeps every CloudEvent): id → (body, provider, account …)."""
    rows = await db.fetch(
        "SELECT id, type, provider, account, correlation_id, body FROM events"
        " WHERE id = ANY($1::text[])",
        list(event_ids),
    )
    return {row["id"]: row for row in rows}


_START_ROUND = """
INSERT INTO webhook_deliveries AS d (event_id, merchant, event_type, round, state, next_attempt_at)
SELECT t.event_id, t.merchant, t.event_type, 1, 'pending', now()
FROM unnest($1::text[], $2::text[], $3::text[]) AS t(event_id, merchant, event_type)
ON CONFLICT (event_id, merchant) DO UPDATE
    SET round = d.round + 1, state = 'pending', next_attempt_at = now(), updated_at = now()
RETURNING d.event_id, d.merchant, d.round
"""


async def start_rounds(
    db: Executor, targets: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str], int]:
    """Move each (event id, merchant, event type) to a new round; returns the new rounds.

    Run inside the transaction that also publishes the replay messages: if publishing fails,
    the rounds roll back and the deliveries stay as they were (failed, parked).
    """
    rows = await db.fetch(
        _START_ROUND,
        [t[0] for t in targets],
        [t[1] for t in targets],
        [t[2] for t in targets],
    )
    return {(row["event_id"], row["merchant"]): row["round"] for row in rows}
