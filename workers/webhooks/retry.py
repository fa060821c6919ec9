"""What to do after an attempt: a pure function of the attempt, its outcome and the schedule.

The schedule is a list of delays, one per attempt: ``[0, 3600, 10800, 86400]`` means attempt 1
at once, attempt 2 one hour after attempt 1 failed, and so on; after the last attempt the
delivery is dead. Each positive delay has its own RabbitMQ delay queue (a per-queue TTL), so
a delay can only be one of the schedule's own steps. That is why ``Retry-After`` is honoured
by picking the smallest step that is at least the requested wait (capped at the largest step,
so a receiver cannot push a delivery out indefinitely), rather than by an exact timer. No
jitter either, for the same reason: every message in one delay queue waits exactly its TTL.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["Action", "Outcome", "Plan", "parse_retry_after", "plan_next"]


class Outcome(enum.StrEnum):
    """How one attempt ended, as far as scheduling cares."""

    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410: the receiver asked us to stop
    FAILED = "failed"  # any other status, timeout, connection/DNS error, breaker open, refused


class Action(enum.StrEnum):
    DONE = "done"  # delivered: nothing more to do
    RETRY = "retry"  # deliver again after ``delay`` as attempt ``next_attempt``
    DEAD = "dead"  # schedule used up: dead queue, delivery failed
    PARK = "park"  # endpoint disabled: dead queue, delivery parked until an operator replays


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    delay: float = 0.0
    next_attempt: int | None = None


def plan_next(
    attempt: int,
    outcome: Outcome,
    schedule: Sequence[float],
    retry_after: float | None = None,
) -> Plan:
    """The plan after attempt ``attempt`` (1-based) ended with ``outcome``."""
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if not schedule:
        raise ValueError("a schedule has at least one step")
    if outcome is Outcome.DELIVERED:
        return Plan(Action.DONE)
    if outcome is Outcome.GONE:
        return Plan(Action.PARK)
    if attempt >= len(schedule):
        return Plan(Action.DEAD)
    delay = float(schedule[attempt])
    if retry_after is not None and retry_after > delay:
        delay = _step_at_least(retry_after, schedule)
    return Plan(Action.RETRY, delay=delay, next_attempt=attempt + 1)


def _step_at_least(wanted: float, schedule: Sequence[float]) -> float:
    steps = sorted({float(s) for s in schedule if s > 0})
    if not steps:
        return 0.0
    return next((s for s in steps if s >= wanted), steps[-1])


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
