"""SQL for the ledger's apply path: set-based, three statements per batch.

A batch is one transaction of five round trips whatever its size: ``BEGIN``, the payment
locks (``lock_payments``), one read of everything the decisions need (``read_batch``: the
payments, which callbacks are recorded, the order expectations), one write of everything they
produced (``write_batch``: payments, callbacks, journal entries, postings and events, as
data-modifying ``WITH`` parts of one statement), and ``COMMIT``. Rows travel as one JSON
document per table (``json_to_recordset``), so a batch of hundreds of callbacks costs what a
batch of one does in round trips. Why so few: under light load a batch holds one or two
callbacks, and each round trip costs both processes a wakeup (two system calls and a context
switch each way, on loopback); with a statement per table the ledger made eleven (docs/ledger.md).
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
    "BatchRead",
    "BatchWrite",
    "BatchWritten",
    "CallbackRow",
    "Conn",
    "EntryRow",
    "EventRow",
    "PostingRow",
    "insert_events",
    "load_expectations",
    "lock_payments",
    "notify_outbox",
    "payment_id",
    "read_batch",
    "write_batch",
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


async def lock_payments(conn: Conn, ids: Sequence[str]) -> None:
    """Take the batch's payment locks, all at once and in key order.

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

    The rows are read by the next statement (``read_batch``), not this one: READ COMMITTED
    takes a statement's snapshot when it starts, so a read in the statement that waited for a
    lock would not see what the holder committed before letting go.
    """
    keys = sorted({lock_key(pid) for pid in ids})
    await conn.fetchval(_LOCK_KEYS, LOCK_CLASS, keys)


@dataclass(frozen=True, slots=True)
class BatchRead:
    """What deciding a batch needs, read under its locks in one statement."""

    payments: dict[str, Payment]  # the batch's payments that exist, by id
    recorded: set[str]  # ids of the batch's callbacks already recorded
    # Every expectation of an order the batch names or its payments have: a superset of the
    # ones the decisions look up, which is harmless (they are looked up by key).
    expectations: dict[tuple[str, str, str], Expectation]


_READ_BATCH = """
-- JSON documents as text, parsed here: whatever codecs the connection has.
SELECT
  (SELECT coalesce(json_agg(p), '[]') FROM (
      SELECT id, provider, account, transaction_id, kind, state, merchant, order_id, currency,
             amount, test, paid, refund_sum, full_refund, fee, fee_currency, attention
      FROM payments WHERE id = ANY($1::uuid[])) AS p)::text AS payments,
  (SELECT coalesce(array_agg(id::text), '{}') FROM callbacks WHERE id = ANY($2::uuid[]))
      AS recorded,
  (SELECT coalesce(json_agg(e), '[]') FROM (
      SELECT e.provider, e.account, e.order_id, e.merchant, e.amount, e.currency, e.test
      FROM order_expectations e
      WHERE (e.provider, e.account, e.order_id) IN (
          SELECT * FROM unnest($3::text[], $4::text[], $5::text[])
          UNION
          SELECT provider, account, order_id FROM payments
          WHERE id = ANY($1::uuid[]) AND order_id IS NOT NULL)) AS e)::text AS expectations
"""


async def read_batch(
    conn: Conn,
    payment_ids: Sequence[str],
    callback_ids: Sequence[str],
    orders: Iterable[tuple[str, str, str]],
) -> BatchRead:
    """The batch's payments, its callbacks already recorded, and the expectations of the
    orders ``orders`` names or the payments carry; call it after ``lock_payments``."""
    providers, accounts, order_ids = _order_columns(orders)
    row = await conn.fetchrow(
        _READ_BATCH, list(payment_ids), list(callback_ids), providers, accounts, order_ids
    )
    assert row is not None
    payments = (_payment(p) for p in orjson.loads(row["payments"]))
    return BatchRead(
        payments={p.id: p for p in payments},
        recorded=set(row["recorded"]),
        expectations={
            (e.provider, e.account, e.order_id): e
            for e in map(_expectation, orjson.loads(row["expectations"]))
        },
    )


def _order_columns(
    keys: Iterable[tuple[str, str, str]],
) -> tuple[list[str], list[str], list[str]]:
    providers, accounts, orders = [], [], []
    for provider, account, order_id in set(keys):
        providers.append(provider)
        accounts.append(account)
        orders.append(order_id)
    return providers, accounts, orders


def _expectation(r: Mapping[str, Any]) -> Expectation:
    return Expectation(
        merchant=r["merchant"],
        provider=r["provider"],
        account=r["account"],
        order_id=r["order_id"],
        amount=r["amount"],
        currency=r["currency"],
        test=r["test"],
    )


async def load_expectations(
    conn: Conn, keys: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], Expectation]:
    """The expectations of exactly these orders (a held batch's re-check)."""
    providers, accounts, orders = _order_columns(keys)
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
    return {(r["provider"], r["account"], r["order_id"]): _expectation(r) for r in rows}


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

# Each write below is a template: ``{doc}`` is the parameter carrying its JSON document, so
# one text serves ``write_batch``'s single statement and ``insert_events`` on its own.
_INSERT_PAYMENTS = f"""
INSERT INTO payments (id, state, order_id, currency, amount, paid, refund_sum, full_refund,
                      refunded, fee, fee_currency, attention,
                      provider, account, transaction_id, kind, merchant, test)
SELECT * FROM json_to_recordset({{doc}}::text::json) AS r ({_PAYMENT_RECORD})
ORDER BY id
ON CONFLICT DO NOTHING
"""  # noqa: S608 - a constant column list, no data

_UPDATE_PAYMENTS = f"""
UPDATE payments AS p SET state = u.state, order_id = u.order_id, currency = u.currency,
       amount = u.amount, paid = u.paid, refund_sum = u.refund_sum,
       full_refund = u.full_refund, refunded = u.refunded, fee = u.fee,
       fee_currency = u.fee_currency, attention = u.attention, updated_at = now()
FROM json_to_recordset({{doc}}::text::json) AS u ({_PAYMENT_RECORD})
WHERE p.id = u.id
"""  # noqa: S608 - a constant column list, no data


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
FROM json_to_recordset({doc}::text::json) AS c (
    n int, id uuid, payment_id uuid, status text, provider_status text, variant text,
    outcome text, reason text, state_before text, state_after text, correlation_id text,
    body json)
ORDER BY n
ON CONFLICT (id) DO NOTHING
"""


def _callbacks_doc(rows: Sequence[CallbackRow]) -> str:
    return _rows(
        [
            {
                "n": n,  # recorded in the order they were applied
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
    )


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


_INSERT_ENTRIES = """
INSERT INTO journal_entries (id, payment_id, memo)
SELECT * FROM json_to_recordset({doc}::text::json) AS e (id uuid, payment_id uuid, memo text)
"""

# All legs of the batch in one statement (one part of ``write_batch``'s): the balance trigger
# checks each INSERT's rows (migration 011), so an entry's legs must arrive together.
_INSERT_POSTINGS = """
INSERT INTO postings (entry_id, leg, account, currency, amount)
SELECT * FROM json_to_recordset({doc}::text::json) AS p (e uuid, l int2, a text, c text, m int8)
"""


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
    body: bytes  # the CloudEvent's JSON (``contracts.events.encode_event``), as published


_INSERT_EVENTS = """
INSERT INTO events (id, type, source, subject, routing_key, provider, account, merchant,
                    correlation_id, body)
SELECT id, type, source, subject, routing_key, provider, account, merchant, correlation_id, body
FROM json_to_recordset({doc}::text::json) AS e (
    n int, id text, type text, source text, subject text, routing_key text, provider text,
    account text, merchant text, correlation_id text, body jsonb)
ORDER BY n
ON CONFLICT (id) DO NOTHING
RETURNING id, seq
"""


def _events_doc(events: Sequence[EventRow]) -> str:
    return _rows(
        [
            {
                "n": n,  # their seq is the publication order
                "id": e.id,
                "type": e.type,
                "source": e.source,
                "subject": e.subject,
                "routing_key": e.routing_key,
                "provider": e.provider,
                "account": e.account,
                "merchant": e.merchant,
                "correlation_id": e.correlation_id,
                "body": orjson.Fragment(e.body),  # already JSON: embedded as is
            }
            for n, e in enumerate(events)
        ]
    )


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """Everything a batch's decisions produced."""

    created: Sequence[Payment] = ()  # in id order
    updated: Sequence[Payment] = ()
    callbacks: Sequence[CallbackRow] = ()  # in the order they were applied
    entries: Sequence[EntryRow] = ()
    postings: Sequence[PostingRow] = ()
    events: Sequence[EventRow] = ()  # in publication order


@dataclass(frozen=True, slots=True)
class BatchWritten:
    payments: int  # new payments inserted (all of ``created``, under the locks)
    callbacks: int  # callbacks recorded (all of them, under the locks)
    events: dict[str, int]  # the ``seq`` of each event written, by id (a known id is not)


# Parts of one statement see one snapshot and none of each other's rows, which is all they
# need: no part reads a table another writes (the tables have no foreign keys), and the
# postings' balance trigger reads its own transition table. Counts come back so the caller
# can tell a bypassed lock (a conflict skipped a row) and roll the whole batch back.
_WRITE_BATCH = f"""
WITH new_payments AS ({_INSERT_PAYMENTS.format(doc="$1")} RETURNING 1),
     changed_payments AS ({_UPDATE_PAYMENTS.format(doc="$2")} RETURNING 1),
     new_callbacks AS ({_INSERT_CALLBACKS.format(doc="$3")} RETURNING 1),
     new_entries AS ({_INSERT_ENTRIES.format(doc="$4")} RETURNING 1),
     new_postings AS ({_INSERT_POSTINGS.format(doc="$5")} RETURNING 1),
     new_events AS ({_INSERT_EVENTS.format(doc="$6")})
SELECT (SELECT count(*) FROM new_payments) AS payments,
       (SELECT count(*) FROM new_callbacks) AS callbacks,
       (SELECT coalesce(json_agg(json_build_array(id, seq)), '[]') FROM new_events)::text
           AS events
"""  # noqa: S608 - constant statements, no data


async def write_batch(conn: Conn, batch: BatchWrite) -> BatchWritten:
    """Write everything in one statement (inside the caller's transaction)."""
    row = await conn.fetchrow(
        _WRITE_BATCH,
        _rows([_payment_row(p) for p in batch.created]),
        _rows([_payment_row(p) for p in batch.updated]),
        _callbacks_doc(batch.callbacks),
        _rows([{"id": e.id, "payment_id": e.payment_id, "memo": e.memo} for e in batch.entries]),
        _rows(
            [
                {"e": p.entry_id, "l": p.leg, "a": p.account, "c": p.currency, "m": p.amount}
                for p in batch.postings
            ]
        ),
        _events_doc(batch.events),
    )
    assert row is not None
    return BatchWritten(
        payments=row["payments"],
        callbacks=row["callbacks"],
        events={event_id: seq for event_id, seq in orjson.loads(row["events"])},
    )


async def insert_events(conn: Conn, events: Sequence[EventRow]) -> dict[str, int]:
    """Write outbox rows alone (tests; the ledger writes them with ``write_batch``).

    Returns the ``seq`` of each row written, by event id: an event whose id is already in the
    outbox is not written again (and not published again by whoever wrote this batch).
    """
    if not events:
        return {}
    rows = await conn.fetch(_INSERT_EVENTS.format(doc="$1"), _events_doc(events))
    return {row["id"]: row["seq"] for row in rows}


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
