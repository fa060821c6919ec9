"""Payment search for operators: ``payhook payments list`` and the console's payments pages.

One filter type, one query builder, newest first, paged by keyset on ``(created_at, id)``
(never OFFSET: page 1,000 costs what page 1 costs). Only the filters given become SQL
predicates, each backed by an index of migration 070; values are always bind parameters.

Attention kinds name the ``payments.attention`` prefixes the ledger writes
(``workers/ledger/decide.py``): ``held`` (``no_expectation``), ``mismatch``
(``amount_mismatch``), ``conflict`` and ``invalid``; ``any`` is every flagged payment.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from workers.ledger.conn import Conn
from workers.ledger.states import RANK

__all__ = [
    "ATTENTION_KINDS",
    "InvalidFilter",
    "PaymentFilter",
    "PaymentPage",
    "attention_kind",
    "decode_cursor",
    "encode_cursor",
    "search_payments",
]

# kind -> the prefix of payments.attention (decide.py writes "<outcome>: <reason>")
ATTENTION_KINDS: dict[str, str] = {
    "held": "no_expectation:",
    "mismatch": "amount_mismatch:",
    "conflict": "conflict:",
    "invalid": "invalid:",
}
MAX_LIMIT = 500


class InvalidFilter(ValueError):
    """A filter or cursor an operator typed that cannot be searched for (says which)."""


@dataclass(frozen=True, slots=True)
class PaymentFilter:
    provider: str | None = None
    transaction_id: str | None = None
    order_id: str | None = None
    merchant: str | None = None
    state: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    attention: str | None = None  # "any" or one of ATTENTION_KINDS

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in _ALL_STATES:
            raise InvalidFilter(f"unknown state {self.state!r}")
        if self.attention is not None and self.attention not in ("any", *ATTENTION_KINDS):
            raise InvalidFilter(
                f"attention is 'any' or one of {', '.join(ATTENTION_KINDS)}, not {self.attention!r}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime) and value.tzinfo is None:
                raise InvalidFilter(f"{f.name} needs a time zone")

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


_ALL_STATES = frozenset(RANK)


@dataclass(frozen=True, slots=True)
class PaymentPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None  # pass as ``after`` for the next (older) page


def encode_cursor(created_at: datetime, payment_id: uuid.UUID | str) -> str:
    raw = f"{created_at.isoformat()}|{payment_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        when, _, ident = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        created_at = datetime.fromisoformat(when)
        payment_id = uuid.UUID(ident)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidFilter("not a cursor from a previous page") from None
    if created_at.tzinfo is None:
        raise InvalidFilter("not a cursor from a previous page")
    return created_at, payment_id


def attention_kind(attention: str | None) -> str | None:
    """``held``, ``mismatch``, ``conflict``, ``invalid`` for a payment's attention text."""
    if attention is None:
        return None
    for kind, prefix in ATTENTION_KINDS.items():
        if attention.startswith(prefix):
            return kind
    return "other"


_COLUMNS = (
    "id, provider, account, transaction_id, kind, state, merchant, order_id, currency, amount,"
    " test, paid, refunded, fee, fee_currency, attention, created_at, updated_at"
)


def build_query(flt: PaymentFilter, limit: int, after: str | None) -> tuple[str, list[Any]]:
    """The SQL and its parameters for one page (``limit`` + 1 rows: the extra says "more")."""
    where: list[str] = []
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    for column in ("provider", "transaction_id", "order_id", "merchant", "state"):
        value = getattr(flt, column)
        if value is not None:
            where.append(f"{column} = {param(value)}")
    if flt.since is not None:
        where.append(f"created_at >= {param(flt.since)}")
    if flt.until is not None:
        where.append(f"created_at < {param(flt.until)}")
    if flt.attention is not None:
        # Literal, not a parameter: the planner must see it to use the partial index.
        where.append("attention IS NOT NULL")
        if flt.attention != "any":
            prefix = ATTENTION_KINDS[flt.attention]
            where.append(f"attention LIKE {param(prefix + '%')}")
    if after is not None:
        created_at, payment_id = decode_cursor(after)
        where.append(f"(created_at, id) < ({param(created_at)}, {param(payment_id)})")
    sql = f"SELECT {_COLUMNS} FROM payments"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY created_at DESC, id DESC LIMIT {param(limit + 1)}"
    return sql, params


async def search_payments(
    conn: Conn, flt: PaymentFilter, *, limit: int = 50, after: str | None = None
) -> PaymentPage:
    """Payments matching ``flt``, newest first, at most ``limit``, older than ``after``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidFilter(f"limit must be 1..{MAX_LIMIT}")
    sql, params = build_query(flt, limit, after)
    rows = [dict(r) for r in await conn.fetch(sql, *params)]
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        row["id"] = str(row["id"])
        row["attention_kind"] = attention_kind(row["attention"])
    cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return PaymentPage(rows, cursor)
