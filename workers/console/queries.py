"""Read-side SQL of the console that the ``payhook`` commands do not share.

Each query is bounded whatever the ledger's size: windows of recent rows are read through the
indexes of migration 070 with a row cap, counts of things that should be few (unpublished
events, deliveries in trouble) are capped too. Payment search and delivery filters are shared
with the commands (``workers.ledger.search``, ``workers.webhooks.filters``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workers.ledger.conn import Conn
from workers.ledger.decide import RELEASE_MARK

__all__ = [
    "CALLBACK_WINDOW_CAP",
    "Overview",
    "callback_documents",
    "events_of_payment",
    "overview",
    "overview_trouble",
    "payment_key",
]

# Rows of the 15-minute window read at most (newest first): at 100 callbacks/s that is the
# last 100 s, and the rates say they were measured over less than the window. Each row costs
# a payments lookup (its provider), so this bounds what a refresh of the overview costs.
CALLBACK_WINDOW_CAP = 10_000
_BACKLOG_CAP = 100_000
_LAG_SAMPLE = 2_000
WINDOWS_S = (60, 300, 900)

# The window comes from callbacks_recorded alone (an index-only scan); each row's provider
# is one primary-key lookup (a subquery, so that the planner does not hash all payments).
_CALLBACK_RATES = """
WITH recent AS MATERIALIZED (
    SELECT payment_id, recorded_at FROM callbacks
    WHERE recorded_at >= now() - interval '15 minutes'
    ORDER BY recorded_at DESC LIMIT $1
), named AS (
    SELECT (SELECT provider FROM payments p WHERE p.id = r.payment_id) AS provider,
           r.recorded_at
    FROM recent r
)
SELECT coalesce(provider, '?') AS provider,
       count(*) FILTER (WHERE recorded_at >= now() - interval '1 minute') AS w60,
       count(*) FILTER (WHERE recorded_at >= now() - interval '5 minutes') AS w300,
       count(*) AS w900,
       min(recorded_at) AS oldest
FROM named GROUP BY 1 ORDER BY 1
"""
# recorded_at - received_at of the last minute's callbacks (a sample of the newest), leaving
# out held callbacks decided again by a registration (their received_at is the first one's).
_LAG = f"""
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag) AS p95,
       max(lag) AS max
FROM (
    SELECT extract(epoch FROM recorded_at - (body ->> 'received_at')::timestamptz) AS lag
    FROM callbacks
    WHERE recorded_at >= now() - interval '1 minute' AND variant NOT LIKE '%{RELEASE_MARK}%'
    ORDER BY recorded_at DESC LIMIT {_LAG_SAMPLE}
) s
"""
_NEWEST_CALLBACK = "SELECT max(recorded_at) FROM callbacks"
_BACKLOG = f"""
SELECT (SELECT count(*) FROM (SELECT 1 FROM events WHERE published_at IS NULL
                              LIMIT {_BACKLOG_CAP + 1}) s) AS unpublished,
       (SELECT created_at FROM events WHERE published_at IS NULL ORDER BY seq LIMIT 1) AS oldest
"""
# The predicate exactly as webhook_deliveries_trouble_merchant's: an index-only scan.
_TROUBLE_BY_MERCHANT = """
SELECT merchant,
       count(*) FILTER (WHERE state = 'pending') AS failing,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'parked') AS parked,
       max(updated_at) AS latest
FROM webhook_deliveries
WHERE (state IN ('failed', 'parked') OR (state = 'pending' AND attempts > 0))
GROUP BY merchant ORDER BY merchant
"""
_DISABLED = """
SELECT merchant, disabled_at, disabled_reason FROM webhook_endpoints
WHERE disabled_at IS NOT NULL ORDER BY merchant
"""
_ATTENTION = """
SELECT split_part(attention, ':', 1) AS outcome, count(*) AS n
FROM payments WHERE attention IS NOT NULL GROUP BY 1 ORDER BY 1
"""


@dataclass(slots=True)
class Overview:
    now: datetime
    # provider -> {60: per s, 300: …, 900: …}; ``partial`` windows were longer than the cap
    rates: dict[str, dict[int, float]] = field(default_factory=dict)
    counts: dict[str, dict[int, int]] = field(default_factory=dict)
    covered_s: float | None = None  # set when the cap cut the window short
    lag: dict[str, float | None] = field(default_factory=dict)
    lag_samples: int = 0
    newest_callback: datetime | None = None
    unpublished: int = 0
    unpublished_capped: bool = False
    oldest_unpublished: datetime | None = None
    trouble: list[dict[str, Any]] = field(default_factory=list)
    disabled: list[dict[str, Any]] = field(default_factory=list)
    attention: dict[str, int] = field(default_factory=dict)

    @property
    def attention_total(self) -> int:
        return sum(self.attention.values())


async def overview(conn: Conn) -> Overview:
    """Every figure of the overview page, read in one read-only transaction.

    JIT compilation is off for it: the planner's estimate of the callbacks window (a lookup per
    row) crosses ``jit_above_cost``, and compiling cost more than the query (90 ms seen).
    """
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL jit = off")
        return await _overview(conn)


async def _overview(conn: Conn) -> Overview:
    now: datetime = await conn.fetchval("SELECT now()")
    out = Overview(now=now)
    rows = await conn.fetch(_CALLBACK_RATES, CALLBACK_WINDOW_CAP)
    total = sum(r["w900"] for r in rows)
    oldest = min((r["oldest"] for r in rows), default=None)
    if total >= CALLBACK_WINDOW_CAP and oldest is not None:
        out.covered_s = max((now - oldest).total_seconds(), 1.0)
    for r in rows:
        counts = {60: r["w60"], 300: r["w300"], 900: r["w900"]}
        out.counts[r["provider"]] = counts
        out.rates[r["provider"]] = {w: counts[w] / min(w, out.covered_s or w) for w in WINDOWS_S}
    lag = await conn.fetchrow(_LAG)
    assert lag is not None
    out.lag_samples = lag["n"]
    out.lag = {k: (float(lag[k]) if lag[k] is not None else None) for k in ("p50", "p95", "max")}
    out.newest_callback = await conn.fetchval(_NEWEST_CALLBACK)
    backlog = await conn.fetchrow(_BACKLOG)
    assert backlog is not None
    out.unpublished = min(backlog["unpublished"], _BACKLOG_CAP)
    out.unpublished_capped = backlog["unpublished"] > _BACKLOG_CAP
    out.oldest_unpublished = backlog["oldest"]
    out.trouble = [dict(r) for r in await conn.fetch(_TROUBLE_BY_MERCHANT)]
    out.disabled = [dict(r) for r in await conn.fetch(_DISABLED)]
    out.attention = {r["outcome"]: r["n"] for r in await conn.fetch(_ATTENTION)}
    return out


async def overview_trouble(conn: Conn) -> dict[str, dict[str, Any]]:
    """Deliveries in trouble per merchant: failing, failed, parked, latest change."""
    return {r["merchant"]: dict(r) for r in await conn.fetch(_TROUBLE_BY_MERCHANT)}


async def payment_key(conn: Conn, payment_id: str) -> tuple[str, str, str] | None:
    """(provider, account, transaction id) of a payment, by its id."""
    row = await conn.fetchrow(
        "SELECT provider, account, transaction_id FROM payments WHERE id = $1::uuid", payment_id
    )
    return None if row is None else (row["provider"], row["account"], row["transaction_id"])


async def callback_documents(conn: Conn, payment_id: str) -> list[dict[str, Any]]:
    """Each recorded callback of a payment with its document as received (to be masked)."""
    rows = await conn.fetch(
        "SELECT id, seq, recorded_at, outcome, body FROM callbacks"
        " WHERE payment_id = $1::uuid ORDER BY seq",
        payment_id,
    )
    return [{**dict(r), "id": str(r["id"])} for r in rows]


async def events_of_payment(
    conn: Conn, provider: str, account: str, transaction_id: str
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, type, created_at, published_at FROM events"
        " WHERE provider = $1 AND account = $2 AND subject = $3 ORDER BY seq",
        provider,
        account,
        transaction_id,
    )
    return [dict(r) for r in rows]


async def attempts_of_events(conn: Conn, event_ids: list[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT event_id, merchant, round, attempt, started_at, finished_at, duration_ms,"
        " status_code, error_class, response_body, next_action, next_delay_s"
        " FROM webhook_attempts WHERE event_id = ANY($1::text[])"
        " ORDER BY event_id, merchant, round, attempt",
        event_ids,
    )
    return [dict(r) for r in rows]
