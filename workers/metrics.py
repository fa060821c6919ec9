"""The workers' Prometheus metrics (see ``runtime/metrics.py`` for the conventions).

Ledger worker:
    payhook_ledger_callbacks_total{outcome}   applied, duplicate, held (no_expectation,
                                               amount_mismatch), conflict, stale, late,
                                               unrecognized …, failed, dead_lettered
    payhook_ledger_batch_size                  callbacks per transaction
    payhook_ledger_batch_seconds               one batch's transaction, start to commit
    payhook_ledger_lag_seconds                 ingress received_at → commit, of the oldest
                                               callback in each batch
    payhook_ledger_attention_payments          payments needing an operator (gauge, refreshed)
Relay:
    payhook_relay_events_published_total
    payhook_relay_outbox_pending               unpublished events (gauge, refreshed)
    payhook_relay_outbox_oldest_age_seconds    age of the oldest unpublished event
Webhook worker:
    payhook_webhook_attempts_total{merchant,outcome}   2xx, 3xx, 4xx, 5xx, timeout,
                                               connection_error, blocked_address, circuit_open,
                                               other errors by their class
    payhook_webhook_delivery_seconds{merchant} event time → the 2xx that delivered it
    payhook_webhook_breaker_state{merchant}    0 closed, 1 half-open, 2 open
    payhook_webhook_deliveries{state}          pending, failed, parked (gauge, refreshed)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BREAKER_STATES",
    "RELAY_PUBLISHED",
    "WEBHOOK_BREAKER",
    "WEBHOOK_DELIVERY_SECONDS",
    "LedgerMetrics",
    "refresh_attention",
    "refresh_deliveries",
    "refresh_outbox",
    "seconds_since",
    "webhook_attempt",
]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

LEDGER_CALLBACKS = Counter(
    "payhook_ledger_callbacks", "Callbacks the ledger decided, by outcome.", ["outcome"]
)
LEDGER_BATCH_SIZE = Histogram(
    "payhook_ledger_batch_size",
    "Callbacks applied per transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
LEDGER_BATCH_SECONDS = Histogram(
    "payhook_ledger_batch_seconds", "One batch's transaction, start to commit.", buckets=_SECONDS
)
LEDGER_LAG_SECONDS = Histogram(
    "payhook_ledger_lag_seconds",
    "From the ingress receiving a callback to the ledger committing it (oldest per batch).",
    buckets=_SECONDS,
)
LEDGER_ATTENTION = Gauge(
    "payhook_ledger_attention_payments", "Payments flagged for an operator (conflicts, holds)."
)

LEDGER_EVENTS_PUBLISHED = Counter(
    "payhook_ledger_events_published",
    "Events the ledger worker published (confirmed) right after committing them.",
)

RELAY_PUBLISHED = Counter("payhook_relay_events_published", "Events published by the relay.")
RELAY_PENDING = Gauge("payhook_relay_outbox_pending", "Events committed but not yet published.")
RELAY_OLDEST = Gauge(
    "payhook_relay_outbox_oldest_age_seconds", "Age of the oldest unpublished event (0: none)."
)

WEBHOOK_ATTEMPTS = Counter(
    "payhook_webhook_attempts",
    "Delivery attempts, by merchant and outcome.",
    ["merchant", "outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "payhook_webhook_delivery_seconds",
    "From the event's time to the 2xx that delivered it.",
    ["merchant"],
    buckets=_SECONDS,
)
WEBHOOK_BREAKER = Gauge(
    "payhook_webhook_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ["merchant"]
)
WEBHOOK_DELIVERIES = Gauge(
    "payhook_webhook_deliveries", "Deliveries by state (pending, failed, parked).", ["state"]
)

# Counters with labels appear only once a child exists; rare outcomes start at 0 so that
# rate()/increase() see their first occurrence (alert rules depend on that).
for _outcome in ("applied", "duplicate", "failed", "dead_lettered"):
    LEDGER_CALLBACKS.labels(_outcome)

BREAKER_STATES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}


def seconds_since(timestamp: str) -> float | None:
    """Seconds from an ISO 8601 time (``…Z``) to now; ``None`` if it does not parse."""
    try:
        then = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()


class LedgerMetrics:
    """What one applied batch moves."""

    def batch(
        self,
        outcomes: dict[str, int],
        duplicates: int,
        failed: int,
        size: int,
        seconds: float,
        oldest_received_at: str | None,
    ) -> None:
        for outcome, count in outcomes.items():
            LEDGER_CALLBACKS.labels(outcome).inc(count)
        if duplicates:
            LEDGER_CALLBACKS.labels("duplicate").inc(duplicates)
        if failed:
            LEDGER_CALLBACKS.labels("failed").inc(failed)
        LEDGER_BATCH_SIZE.observe(size)
        LEDGER_BATCH_SECONDS.observe(seconds)
        if oldest_received_at:
            lag = seconds_since(oldest_received_at)
            if lag is not None:
                LEDGER_LAG_SECONDS.observe(max(0.0, lag))

    def dead_lettered(self) -> None:
        LEDGER_CALLBACKS.labels("dead_lettered").inc()

    def published(self, events: int) -> None:
        LEDGER_EVENTS_PUBLISHED.inc(events)


def webhook_attempt(merchant: str, status_code: int | None, error_class: str | None) -> None:
    if status_code is not None:
        outcome = f"{status_code // 100}xx"
    else:
        outcome = error_class or "error"
    WEBHOOK_ATTEMPTS.labels(merchant, outcome).inc()


async def refresh_attention(pool: asyncpg.Pool[Any]) -> None:
    # The partial index payments_attention_recent makes this a count over flagged rows only.
    LEDGER_ATTENTION.set(
        await pool.fetchval("SELECT count(*) FROM payments WHERE attention IS NOT NULL")
    )


async def refresh_outbox(pool: asyncpg.Pool[Any]) -> None:
    row = await pool.fetchrow(
        "SELECT count(*) AS pending,"
        " coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest"
        " FROM events WHERE published_at IS NULL"
    )
    assert row is not None
    RELAY_PENDING.set(row["pending"])
    RELAY_OLDEST.set(row["oldest"])


async def refresh_deliveries(pool: asyncpg.Pool[Any]) -> None:
    rows = await pool.fetch(
        "SELECT state, count(*) AS n FROM webhook_deliveries"
        " WHERE state IN ('pending', 'failed', 'parked') GROUP BY state"
    )
    counts = {row["state"]: row["n"] for row in rows}
    for state in ("pending", "failed", "parked"):
        WEBHOOK_DELIVERIES.labels(state).set(counts.get(state, 0))
