"""SQL for the ledger's apply path: set-based, one statement per table per batch.

Every write takes arrays (``unnest``) so a batch of hundreds of callbacks costs a dozen round
trips, not hundreds: one transaction per row tops out near 1,800 rows/s here, while batches
reach tens of thousands (see /work/shared/LOCAL-SERVERS.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.statuses import Kind
from workers.ledger.conn import Conn
from workers.ledger.decide import Payment
from workers.ledger.expectations import Expectation
from workers.ledger.postings import Money

__all__ = [
    "CallbackRow",
    "Conn",
    "EntryRow",
    "EventRow",
    "PostingRow",
    "existing_callbacks",
    "insert_callbacks",
    "insert_entries",
    "insert_events",
    "insert_payments",
    "insert_postings",
    "load_expectations",
    "lock_payments",
    "notify_outbox",
    "payment_id",
    "update_payments",
]

OUTBOX_CHANNEL = "payhook_outbox"  # the relay LISTENs here (workers/relay.py)

# Fixed forever: payment ids are derived from it, so changing it would orphan every row.
_PAYMENT_NAMESPACE = uuid.UUID("0b7f3c52-7f7e-5b8e-a3c4-2f1d9a6e4c10")


def payment_id(provider: str, account: str, transaction_id: str) -> str:
    return str(uuid.uuid5(_PAYMENT_NAMESPACE, f"{provider}\x1f{account}\x1f{transaction_id}"))


_LOCK_PAYMENTS = """
SELECT id, provider, account, transaction_id, kind, state, merchant, order_id, currency, amount,
       test, paid, refund_sum, full_refund, fee, fee_currency, attention
FROM payments WHERE id = ANY($1::uuid[])
ORDER BY id FOR UPDATE
"""


def _payment(row: Mapping[str, Any]) -> Payment:
    return Payment(
        id=str(row["id"]),
        provider=row["provider"],
        account=row["account"],
        transaction_id=row["transaction_id"],
        kind=Kind(row["kind"]),
        state=row["state"],
        merchant=row["merchant"],
        order_id=row["order_id"],
        currency=row["currency"],
        amount=row["amount"],
        test=row["test"],
        money=Money(row["paid"], row["refund_sum"], row["full_refund"], row["fee"]),
        fee_currency=row["fee_currency"],
        attention=row["attention"],
        exists=True,
    )


async def lock_payments(conn: Conn, ids: Sequence[str]) -> dict[str, Payment]:
    """Lock the existing rows among ``ids``, in id order, and return them.

    Why row locks (and this order): every change to a payment happens under its row lock,
    so two workers holding callbacks of one payment take turns, and the second sees the
    first's committed result (READ COMMITTED takes a fresh snapshot per statement). Locking
    in one global order (the ``ORDER BY`` runs below the lock step) means two batches never
    wait on each other in a cycle. Serializable transactions would give the same result with
    more aborted work under exactly the contention this path sees (duplicates of one payment
    in flight on several workers).
    """
    rows = await conn.fetch(_LOCK_PAYMENTS, list(ids))
    return {str(row["id"]): _payment(row) for row in rows}


async def existing_callbacks(conn: Conn, ids: Sequence[str]) -> set[str]:
    rows = await conn.fetch("SELECT id FROM callbacks WHERE id = ANY($1::uuid[])", list(ids))
    return {str(row["id"]) for row in rows}


async def load_expectations(
    conn: Conn, keys: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Expectation]:
    providers, accounts, orders = [], [], []
    for provider, account, order_id in set(keys):
        providers.append(provider)
        accounts.append(account)
        orders.append(order_id)
    if not providers:
        return {}
    rows = await conn.fetch(
        "SELECT e.provider, e.account, e.order_id, e.merchant, e.amount, e.currency, e.test"
        " FROM order_expectations e"
        " JOIN unnest($1::text[], $2::text[], $3::text[]) AS k (provider, account, order_id)"
        " USING (provider, account, order_id)",
        providers,
        accounts,
        orders,
    )
    return {
        (r["provider"], r["account"], r["order_id"]): Expectation(
            merchant=r["merchant"],
            provider=r["provider"],
            account=r["account"],
            order_id=r["order_id"],
            amount=r["amount"],
            currency=r["currency"],
            test=r["test"],
        )
        for r in rows
    }


def _payment_arrays(payments: Sequence[Payment]) -> list[list[Any]]:
    return [
        [p.id for p in payments],
        [p.state for p in payments],
        [p.order_id for p in payments],
        [p.currency for p in payments],
        [p.amount for p in payments],
        [p.money.paid for p in payments],
        [p.money.refund_sum for p in payments],
        [p.money.full_refund for p in payments],
        [p.money.refunded for p in payments],
        [p.money.fee for p in payments],
        [p.fee_currency for p in payments],
        [p.attention for p in payments],
    ]


_INSERT_PAYMENTS = """
INSERT INTO payments (id, state, order_id, currency, amount, paid, refund_sum, full_refund,
                      refunded, fee, fee_currency, attention,
                      provider, account, transaction_id, kind, merchant, test)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                     $7::int8[], $8::bool[], $9::int8[], $10::int8[], $11::text[], $12::text[],
                     $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bool[])
ORDER BY 1
ON CONFLICT DO NOTHING
"""


async def insert_payments(conn: Conn, payments: Sequence[Payment]) -> int:
    """Insert rows this batch created; returns how many went in (fewer: someone else did)."""
    if not payments:
        return 0
    status = await conn.execute(
        _INSERT_PAYMENTS,
        *_payment_arrays(payments),
        [p.provider for p in payments],
        [p.account for p in payments],
        [p.transaction_id for p in payments],
        [p.kind.value for p in payments],
        [p.merchant for p in payments],
        [p.test for p in payments],
    )
    return int(status.rsplit(" ", 1)[1])


_UPDATE_PAYMENTS = """
UPDATE payments AS p SET state = u.state, order_id = u.order_id, currency = u.currency,
       amount = u.amount, paid = u.paid, refund_sum = u.refund_sum,
       full_refund = u.full_refund, refunded = u.refunded, fee = u.fee,
       fee_currency = u.fee_currency, attention = u.attention, updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
            $7::int8[], $8::bool[], $9::int8[], $10::int8[], $11::text[], $12::text[])
     AS u (id, state, order_id, currency, amount, paid, refund_sum, full_refund, refunded,
           fee, fee_currency, attention)
WHERE p.id = u.id
"""


async def update_payments(conn: Conn, payments: Sequence[Payment]) -> None:
    if payments:
        await conn.execute(_UPDATE_PAYMENTS, *_payment_arrays(payments))


@dataclass(frozen=True, slots=True)
class CallbackRow:
    id: str
    payment_id: str
    status: str
    provider_status: str
    variant: str
    outcome: str
    reason: str | None
    state_before: str
    state_after: str
    correlation_id: str
    body: str  # the CallbackReceived JSON document as received


_INSERT_CALLBACKS = """
INSERT INTO callbacks (id, payment_id, status, provider_status, variant, outcome, reason,
                       state_before, state_after, correlation_id, body)
SELECT id, payment_id, status, provider_status, variant, outcome, reason, state_before,
       state_after, correlation_id, body::jsonb
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[])
     WITH ORDINALITY AS c (id, payment_id, status, provider_status, variant, outcome, reason,
                           state_before, state_after, correlation_id, body, n)
ORDER BY n
ON CONFLICT (id) DO NOTHING
"""


async def insert_callbacks(conn: Conn, rows: Sequence[CallbackRow]) -> int:
    """Record callbacks in the order they were applied; returns how many were new."""
    if not rows:
        return 0
    status = await conn.execute(
        _INSERT_CALLBACKS,
        [r.id for r in rows],
        [r.payment_id for r in rows],
        [r.status for r in rows],
        [r.provider_status for r in rows],
        [r.variant for r in rows],
        [r.outcome for r in rows],
        [r.reason for r in rows],
        [r.state_before for r in rows],
        [r.state_after for r in rows],
        [r.correlation_id for r in rows],
        [r.body for r in rows],
    )
    return int(status.rsplit(" ", 1)[1])


@dataclass(frozen=True, slots=True)
class EntryRow:
    id: str  # the callback's id
    payment_id: str
    memo: str


@dataclass(frozen=True, slots=True)
class PostingRow:
    entry_id: str
    leg: int
    account: str
    currency: str
    amount: int


async def insert_entries(conn: Conn, entries: Sequence[EntryRow]) -> None:
    if entries:
        await conn.execute(
            "INSERT INTO journal_entries (id, payment_id, memo)"
            " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])",
            [e.id for e in entries],
            [e.payment_id for e in entries],
            [e.memo for e in entries],
        )


async def insert_postings(conn: Conn, postings: Sequence[PostingRow]) -> None:
    # One statement for all legs of the batch: the balance trigger checks per statement.
    if postings:
        await conn.execute(
            "INSERT INTO postings (entry_id, leg, account, currency, amount)"
            " SELECT * FROM unnest($1::uuid[], $2::int2[], $3::text[], $4::text[], $5::int8[])",
            [p.entry_id for p in postings],
            [p.leg for p in postings],
            [p.account for p in postings],
            [p.currency for p in postings],
            [p.amount for p in postings],
        )


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    type: str
    source: str
    subject: str
    routing_key: str
    provider: str
    account: str
    merchant: str | None
    correlation_id: str
    body: str  # the CloudEvent as JSON text


_INSERT_EVENTS = """
INSERT INTO events (id, type, source, subject, routing_key, provider, account, merchant,
                    correlation_id, body)
SELECT id, type, source, subject, routing_key, provider, account, merchant, correlation_id,
       body::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[])
     WITH ORDINALITY AS e (id, type, source, subject, routing_key, provider, account, merchant,
                           correlation_id, body, n)
ORDER BY n
ON CONFLICT (id) DO NOTHING
"""


async def insert_events(conn: Conn, events: Sequence[EventRow]) -> int:
    """Write outbox rows in order (their ``seq`` is the publication order)."""
    if not events:
        return 0
    status = await conn.execute(
        _INSERT_EVENTS,
        [e.id for e in events],
        [e.type for e in events],
        [e.source for e in events],
        [e.subject for e in events],
        [e.routing_key for e in events],
        [e.provider for e in events],
        [e.account for e in events],
        [e.merchant for e in events],
        [e.correlation_id for e in events],
        [e.body for e in events],
    )
    return int(status.rsplit(" ", 1)[1])


async def notify_outbox(conn: Conn) -> None:
    # Delivered at commit, once per transaction: the relay wakes up for the whole batch.
    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
