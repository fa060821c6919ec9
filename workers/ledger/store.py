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

import orjson

from contracts.ids import uuid5_text
from contracts.statuses import Kind
from contracts.topology import OUTBOX_CHANNEL  # the relay LISTENs here
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


# Fixed forever: payment ids are derived from it, so changing it would orphan every row.
_PAYMENT_NAMESPACE = uuid.UUID("0b7f3c52-7f7e-5b8e-a3c4-2f1d9a6e4c10")


def payment_id(provider: str, account: str, transaction_id: str) -> str:
    """``uuid5(namespace, "provider\\x1faccount\\x1ftransaction_id")`` as text."""
    return uuid5_text(_PAYMENT_NAMESPACE, f"{provider}\x1f{account}\x1f{transaction_id}")


# Advisory-lock namespace ("LEDG") for payment keys: the two-int form keeps these apart from
# single-bigint advisory locks such as the migration runner's.
LOCK_CLASS = 0x4C454447

_LOCK_KEYS = "SELECT count(pg_advisory_xact_lock($1, k)) FROM unnest($2::int4[]) AS k"

_SELECT_PAYMENTS = """
SELECT id, provider, account, transaction_id, kind, state, merchant, order_id, currency, amount,
       test, paid, refund_sum, full_refund, fee, fee_currency, attention
FROM payments WHERE id = ANY($1::uuid[])
"""


def lock_key(payment_id: str) -> int:
    """The advisory-lock key of a payment: its id's first 32 bits, as a signed int4.

    Two payments sharing a key (about one pair in four billion) merely take turns.
    """
    value = int(payment_id[:8], 16)
    return value - (1 << 32) if value >= 1 << 31 else value


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
    )


async def lock_payments(conn: Conn, ids: Sequence[str]) -> dict[str, Payment]:
    """Take the batch's payment locks, all at once and in key order; return existing rows.

    Why these locks: every change to a payment (its row, its callbacks, entries, postings and
    events) happens under its lock, so two workers holding callbacks of one payment take
    turns, and the second sees the first's committed result (READ COMMITTED reads a fresh
    snapshot per statement). The locks are transaction-scoped advisory locks on the payment's
    key rather than row locks because most payments do not exist yet when their first
    callbacks arrive: a row lock cannot cover a row that is not there, and mixing row locks
    with waits on someone else's uncommitted insert let two batches wait on each other (a
    deadlock, found after a second). Here every wait happens in this one statement, in one
    global order, so no cycle can form. Serializable transactions would give the same result
    with more aborted work under exactly the contention this path sees (copies of one
    callback, or callbacks of one payment, in flight on several workers).
    """
    keys = sorted({lock_key(pid) for pid in ids})
    await conn.fetchval(_LOCK_KEYS, LOCK_CLASS, keys)
    rows = await conn.fetch(_SELECT_PAYMENTS, list(ids))
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


def _rows(rows: list[dict[str, Any]]) -> str:
    # One JSON document per statement, unpacked by json_to_recordset: encoding a few dozen
    # array elements per callback dominated the worker's CPU; orjson does this in C.
    return orjson.dumps(rows).decode()


def _payment_row(p: Payment) -> dict[str, Any]:
    return {
        "id": p.id,
        "state": p.state,
        "order_id": p.order_id,
        "currency": p.currency,
        "amount": p.amount,
        "paid": p.money.paid,
        "refund_sum": p.money.refund_sum,
        "full_refund": p.money.full_refund,
        "refunded": p.money.refunded,
        "fee": p.money.fee,
        "fee_currency": p.fee_currency,
        "attention": p.attention,
        "provider": p.provider,
        "account": p.account,
        "transaction_id": p.transaction_id,
        "kind": p.kind.value,
        "merchant": p.merchant,
        "test": p.test,
    }


_PAYMENT_RECORD = """
    id uuid, state text, order_id text, currency text, amount int8, paid int8, refund_sum int8,
    full_refund bool, refunded int8, fee int8, fee_currency text, attention text,
    provider text, account text, transaction_id text, kind text, merchant text, test bool
"""

_INSERT_PAYMENTS = f"""
INSERT INTO payments (id, state, order_id, currency, amount, paid, refund_sum, full_refund,
                      refunded, fee, fee_currency, attention,
                      provider, account, transaction_id, kind, merchant, test)
SELECT * FROM json_to_recordset($1::text::json) AS r ({_PAYMENT_RECORD})
ORDER BY id
ON CONFLICT DO NOTHING
"""  # noqa: S608 - a constant column list, no data


async def insert_payments(conn: Conn, payments: Sequence[Payment]) -> int:
    """Insert new payments (in id order); returns how many went in (all, under the locks)."""
    if not payments:
        return 0
    status = await conn.execute(_INSERT_PAYMENTS, _rows([_payment_row(p) for p in payments]))
    return int(status.rsplit(" ", 1)[1])


_UPDATE_PAYMENTS = f"""
UPDATE payments AS p SET state = u.state, order_id = u.order_id, currency = u.currency,
       amount = u.amount, paid = u.paid, refund_sum = u.refund_sum,
       full_refund = u.full_refund, refunded = u.refunded, fee = u.fee,
       fee_currency = u.fee_currency, attention = u.attention, updated_at = now()
FROM json_to_recordset($1::text::json) AS u ({_PAYMENT_RECORD})
WHERE p.id = u.id
"""  # noqa: S608 - a constant column list, no data


async def update_payments(conn: Conn, payments: Sequence[Payment]) -> None:
    if payments:
        await conn.execute(_UPDATE_PAYMENTS, _rows([_payment_row(p) for p in payments]))


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
    body: bytes  # the CallbackReceived JSON document as received


_INSERT_CALLBACKS = """
INSERT INTO callbacks (id, payment_id, status, provider_status, variant, outcome, reason,
                       state_before, state_after, correlation_id, body)
SELECT id, payment_id, status, provider_status, variant, outcome, reason, state_before,
       state_after, correlation_id, body
FROM json_to_recordset($1::text::json) AS c (
    n int, id uuid, payment_id uuid, status text, provider_status text, variant text,
    outcome text, reason text, state_before text, state_after text, correlation_id text,
    body json)
ORDER BY n
ON CONFLICT (id) DO NOTHING
"""


async def insert_callbacks(conn: Conn, rows: Sequence[CallbackRow]) -> int:
    """Record callbacks in the order they were applied; returns how many were new."""
    if not rows:
        return 0
    doc = [
        {
            "n": n,
            "id": r.id,
            "payment_id": r.payment_id,
            "status": r.status,
            "provider_status": r.provider_status,
            "variant": r.variant,
            "outcome": r.outcome,
            "reason": r.reason,
            "state_before": r.state_before,
            "state_after": r.state_after,
            "correlation_id": r.correlation_id,
            "body": orjson.Fragment(r.body),  # already JSON: embedded as is
        }
        for n, r in enumerate(rows)
    ]
    status = await conn.execute(_INSERT_CALLBACKS, _rows(doc))
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
            " SELECT * FROM json_to_recordset($1::text::json)"
            " AS e (id uuid, payment_id uuid, memo text)",
            _rows([{"id": e.id, "payment_id": e.payment_id, "memo": e.memo} for e in entries]),
        )


async def insert_postings(conn: Conn, postings: Sequence[PostingRow]) -> None:
    # One statement for all legs of the batch: the balance trigger checks per statement.
    if postings:
        doc = [
            {"e": p.entry_id, "l": p.leg, "a": p.account, "c": p.currency, "m": p.amount}
            for p in postings
        ]
        await conn.execute(
            "INSERT INTO postings (entry_id, leg, account, currency, amount)"
            " SELECT * FROM json_to_recordset($1::text::json)"
            " AS p (e uuid, l int2, a text, c text, m int8)",
            _rows(doc),
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
    body: dict[str, Any]  # the CloudEvent


_INSERT_EVENTS = """
INSERT INTO events (id, type, source, subject, routing_key, provider, account, merchant,
                    correlation_id, body)
SELECT id, type, source, subject, routing_key, provider, account, merchant, correlation_id, body
FROM json_to_recordset($1::text::json) AS e (
    n int, id text, type text, source text, subject text, routing_key text, provider text,
    account text, merchant text, correlation_id text, body jsonb)
ORDER BY n
ON CONFLICT (id) DO NOTHING
RETURNING id, seq
"""


async def insert_events(conn: Conn, events: Sequence[EventRow]) -> dict[str, int]:
    """Write outbox rows in order (their ``seq`` is the publication order).

    Returns the ``seq`` of each row written, by event id: an event whose id is already in the
    outbox is not written again (and not published again by whoever wrote this batch).
    """
    if not events:
        return {}
    doc = [
        {
            "n": n,
            "id": e.id,
            "type": e.type,
            "source": e.source,
            "subject": e.subject,
            "routing_key": e.routing_key,
            "provider": e.provider,
            "account": e.account,
            "merchant": e.merchant,
            "correlation_id": e.correlation_id,
            "body": e.body,
        }
        for n, e in enumerate(events)
    ]
    return {row["id"]: row["seq"] for row in await conn.fetch(_INSERT_EVENTS, _rows(doc))}


# A notification's payload is at most 8,000 bytes; beyond this many the relay is told
# "everything" (an empty payload) instead of the list.
_NOTIFY_MAX_SEQS = 400


async def notify_outbox(conn: Conn, seqs: Sequence[int]) -> None:
    """Wake the relay at commit for these rows (``workers.relay`` reads the payload).

    Delivered at commit, once per transaction: the relay wakes up for the whole batch. The
    payload names the rows, so a relay that leaves young rows to the ledger (which publishes
    its own) still publishes these at once; an empty payload means every unpublished row.
    """
    payload = ",".join(map(str, seqs)) if len(seqs) <= _NOTIFY_MAX_SEQS else ""
    await conn.execute("SELECT pg_notify($1, $2)", OUTBOX_CHANNEL, payload)
