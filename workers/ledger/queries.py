"""Read-side SQL for operators: one payment with its history and postings, balances."""

from __future__ import annotations

from typing import Any

from workers.ledger.conn import Conn

__all__ = ["balances", "payment_details"]

_PAYMENTS = """
SELECT id, provider, account, transaction_id, kind, state, merchant, order_id, currency,
       amount, test, paid, refund_sum, full_refund, refunded, fee, fee_currency, attention,
       created_at, updated_at
FROM payments WHERE provider = $1 AND transaction_id = $2 AND ($3::text IS NULL OR account = $3)
ORDER BY account
"""
_HISTORY = """
SELECT id, seq, recorded_at, body ->> 'received_at' AS received_at, status, provider_status,
       variant, outcome, reason, state_before, state_after, correlation_id
FROM callbacks WHERE payment_id = $1 ORDER BY seq
"""
# An entry's id is its callback's id, so a payment's entries are found through its callbacks
# (callbacks_payment) and the entries' primary key: an index on journal_entries.payment_id
# would cost every entry the ledger writes one more random B-tree insert (migration 080).
_POSTINGS = """
SELECT e.id AS entry_id, e.memo, e.created_at, p.leg, p.account, p.currency, p.amount
FROM callbacks c JOIN journal_entries e ON e.id = c.id JOIN postings p ON p.entry_id = e.id
WHERE c.payment_id = $1 AND e.payment_id = $1 ORDER BY e.created_at, e.id, p.leg
"""
_EXPECTATION = """
SELECT merchant, amount, currency, test, created_at, updated_at FROM order_expectations
WHERE provider = $1 AND account = $2 AND order_id = $3
"""


def _plain(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        elif key in ("id", "entry_id") and value is not None:
            value = str(value)
        out[key] = value
    return out


async def payment_details(
    conn: Conn, provider: str, transaction_id: str, account: str | None = None
) -> list[dict[str, Any]]:
    """Every payment matching (one per account), each with history, postings, expectation."""
    found: list[dict[str, Any]] = []
    for row in await conn.fetch(_PAYMENTS, provider, transaction_id, account):
        payment = _plain(row)
        payment["history"] = [_plain(r) for r in await conn.fetch(_HISTORY, row["id"])]
        payment["postings"] = [_plain(r) for r in await conn.fetch(_POSTINGS, row["id"])]
        expectation = None
        if row["order_id"] is not None:
            hit = await conn.fetchrow(_EXPECTATION, provider, row["account"], row["order_id"])
            expectation = _plain(hit) if hit is not None else None
        payment["expectation"] = expectation
        found.append(payment)
    return found


async def balances(conn: Conn, merchant: str | None = None) -> list[dict[str, Any]]:
    """Net balance per account and currency (debit > 0); only a merchant's accounts if asked."""
    if merchant is None:
        rows = await conn.fetch(
            "SELECT account, currency, sum(amount)::int8 AS balance, count(*) AS postings"
            " FROM postings GROUP BY account, currency ORDER BY account, currency"
        )
    else:
        names = [f"merchant_balance:{merchant}", f"test:merchant_balance:{merchant}"]
        rows = await conn.fetch(
            "SELECT account, currency, sum(amount)::int8 AS balance, count(*) AS postings"
            " FROM postings WHERE account = ANY($1::text[])"
            " GROUP BY account, currency ORDER BY account, currency",
            names,
        )
    return [dict(r) for r in rows]
