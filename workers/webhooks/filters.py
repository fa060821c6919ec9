"""Which deliveries an operator means: ``payhook webhooks failed|replay`` and the console.

One filter, one predicate builder, so what ``webhooks failed`` lists is exactly what
``webhooks replay --failed`` (same filters) replays, and what the console shows is what its
"replay all" replays.

States an operator filters on (``webhook_deliveries.state`` plus one derived):

- ``failing``: ``pending`` after at least one failed attempt: the next attempt is scheduled;
- ``failed``: the schedule is used up;
- ``parked``: the endpoint is disabled (410 Gone, or by an operator);
- ``dead``: ``failed`` or ``parked``: no attempt is coming (each has a copy in
  ``<ns>.webhooks.dead``).

The default is every one of them (failing, failed, parked). Predicates are written so that
the partial indexes of migration 070 apply; values are bind parameters, states are literals
from the table above.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.config import Config
from workers.webhooks.store import Executor

__all__ = [
    "DEFAULT_STATES",
    "STATES",
    "DeliveryFilter",
    "DeliveryPage",
    "InvalidFilter",
    "build_search",
    "count_deliveries",
    "count_query",
    "deliveries_of_events",
    "delivery_targets",
    "list_deliveries",
    "merchants_of_endpoint",
    "search_deliveries",
]

# The default set is written exactly as the partial indexes' predicate (migration 070), so the
# planner drops it as implied and can answer from the index alone (counts, per merchant).
_FAILING = "(state = 'pending' AND attempts > 0)"
_DEAD = {("failed",): "state = 'failed'", ("parked",): "state = 'parked'",
         ("failed", "parked"): "state IN ('failed', 'parked')"}  # fmt: skip
STATES = ("failing", "failed", "parked", "dead")
DEFAULT_STATES = ("failing", "failed", "parked")
MAX_LIMIT = 500


class InvalidFilter(ValueError):
    """A filter or cursor that cannot be searched for (says which)."""


def _expand(states: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for state in states:
        if state not in STATES:
            raise InvalidFilter(f"state is one of {', '.join(STATES)}, not {state!r}")
        for one in ("failed", "parked") if state == "dead" else (state,):
            if one not in out:
                out.append(one)
    return tuple(sorted(out, key=DEFAULT_STATES.index))


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """``merchants`` None: every merchant (an endpoint filter resolves to merchants)."""

    states: tuple[str, ...] = DEFAULT_STATES
    merchants: tuple[str, ...] | None = None
    since: datetime | None = None  # last change at or after
    until: datetime | None = None  # last change before

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", _expand(self.states or DEFAULT_STATES))
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidFilter(f"{name} needs a time zone")

    def describe(self) -> str:
        parts = [f"state {'/'.join(self.states)}"]
        if self.merchants is not None:
            parts.append(f"merchant {', '.join(self.merchants) or '(none)'}")
        if self.since is not None:
            parts.append(f"changed since {self.since.isoformat()}")
        if self.until is not None:
            parts.append(f"changed before {self.until.isoformat()}")
        return "; ".join(parts)


def merchants_of_endpoint(config: Config, url: str) -> tuple[str, ...]:
    """The configured merchants whose webhook URL is ``url`` (several may share one)."""
    return tuple(sorted(m.id for m in config.merchants.values() if m.webhook_url == url))


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None


_COLUMNS = (
    "event_id, merchant, event_type, state, round, attempts, last_attempt_at, last_status,"
    " last_error, next_attempt_at, delivered_at, created_at, updated_at"
)


def _where(flt: DeliveryFilter, params: list[Any]) -> list[str]:
    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    arms = []
    dead = tuple(s for s in flt.states if s != "failing")
    if dead:
        arms.append(_DEAD[dead])
    if "failing" in flt.states:
        arms.append(_FAILING)
    where = ["(" + " OR ".join(arms) + ")"]
    if flt.merchants is not None:
        where.append(f"merchant = ANY({param(list(flt.merchants))}::text[])")
    if flt.since is not None:
        where.append(f"updated_at >= {param(flt.since)}")
    if flt.until is not None:
        where.append(f"updated_at < {param(flt.until)}")
    return where


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = "\x1f".join((row["updated_at"].isoformat(), row["event_id"], row["merchant"]))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
        when, event_id, merchant = raw.split("\x1f")
        updated_at = datetime.fromisoformat(when)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidFilter("not a cursor from a previous page") from None
    if updated_at.tzinfo is None:
        raise InvalidFilter("not a cursor from a previous page")
    return updated_at, event_id, merchant


def build_search(flt: DeliveryFilter, limit: int, after: str | None) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page (``limit`` + 1 rows: the extra says "more")."""
    params: list[Any] = []
    where = _where(flt, params)
    if after is not None:
        updated_at, event_id, merchant = _decode_cursor(after)
        n = len(params)
        params.extend((updated_at, event_id, merchant))
        where.append(f"(updated_at, event_id, merchant) < (${n + 1}, ${n + 2}, ${n + 3})")
    params.append(limit + 1)
    sql = (
        f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE {' AND '.join(where)}"
        f" ORDER BY updated_at DESC, event_id DESC, merchant DESC LIMIT ${len(params)}"
    )
    return sql, params


async def search_deliveries(
    db: Executor, flt: DeliveryFilter, *, limit: int = 50, after: str | None = None
) -> DeliveryPage:
    """Deliveries matching ``flt``, most recently changed first, ``limit`` per page."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidFilter(f"limit must be 1..{MAX_LIMIT}")
    sql, params = build_search(flt, limit, after)
    rows = [dict(r) for r in await db.fetch(sql, *params)]
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(rows, _encode_cursor(rows[-1]) if more and rows else None)


def count_query(flt: DeliveryFilter) -> tuple[str, list[Any]]:
    params: list[Any] = []
    where = _where(flt, params)
    return f"SELECT count(*) FROM webhook_deliveries WHERE {' AND '.join(where)}", params


async def count_deliveries(db: Executor, flt: DeliveryFilter) -> int:
    sql, params = count_query(flt)
    return int(await db.fetchval(sql, *params))


async def delivery_targets(db: Executor, flt: DeliveryFilter) -> list[tuple[str, str]]:
    """Every (event id, merchant) matching ``flt`` now, oldest change first (replay order)."""
    return [(r["event_id"], r["merchant"]) for r in await list_deliveries(db, flt)]


async def deliveries_of_events(db: Executor, event_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every delivery (any state) of these events, for a payment's page."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE event_id = ANY($1::text[])"
        " ORDER BY created_at, event_id, merchant",
        list(event_ids),
    )
    return [dict(r) for r in rows]


async def list_deliveries(
    db: Executor, flt: DeliveryFilter, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Deliveries matching ``flt``, oldest change first: what a replay of ``flt`` replays."""
    params: list[Any] = []
    where = _where(flt, params)
    params.append(limit)
    sql = (
        f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE {' AND '.join(where)}"
        f" ORDER BY updated_at, event_id, merchant LIMIT ${len(params)}"
    )
    return [dict(r) for r in await db.fetch(sql, *params)]
