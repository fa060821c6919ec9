"""``payhook ledger check``: recompute every ledger invariant from the stored rows.

Breaches (any one makes the check fail):
1. a journal entry that does not sum to zero per currency, or has no postings;
2. a reference to a row that does not exist (postings -> entry -> callback -> payment), an
   entry whose callback belongs to another payment, or did not move money by its outcome;
3. a payment whose postings differ from what its money targets imply (``postings.legs_for``
   from zero to the stored targets, per account and currency);
4. a payment whose state is not one of its kind's, whose refund exceeds what was paid, or
   that holds money outside the paid branch;
5. a payment whose state is not the one its latest recorded callback left it in;
6. a recorded callback whose event (by its deterministic id) is missing from the outbox.

Payments flagged for attention (conflicts, mismatches) are counted, not breaches: they are
the ledger working as designed and waiting for a person.

Everything is read in one read-only snapshot, payments and callbacks through cursors, so the
check runs against a live ledger in flat memory.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from contracts.events import event_id, event_type
from contracts.statuses import Kind, Status
from workers.ledger.conn import Conn
from workers.ledger.postings import Money, accounts_for, legs_for
from workers.ledger.states import PAID_STATES, STATES

__all__ = ["CheckReport", "check_ledger"]

_MAX_PER_KIND = 20  # breaches listed per check; the count is always complete


@dataclass(slots=True)
class CheckReport:
    breaches: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    hidden: int = 0  # breaches beyond _MAX_PER_KIND per check, counted but not listed

    @property
    def ok(self) -> bool:
        return not self.breaches

    def _add(self, seen: dict[str, int], kind: str, text: str) -> None:
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] <= _MAX_PER_KIND:
            self.breaches.append(text)
        else:
            self.hidden += 1


_UNBALANCED = """
SELECT entry_id, currency, sum(amount) AS total FROM postings
GROUP BY entry_id, currency HAVING sum(amount) <> 0
"""
_EMPTY_ENTRIES = """
SELECT e.id FROM journal_entries e
WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = e.id)
"""
_ENTRY_CALLBACKS = """
SELECT e.id, c.payment_id AS callback_payment, e.payment_id, c.outcome
FROM journal_entries e LEFT JOIN callbacks c ON c.id = e.id
WHERE c.id IS NULL OR c.payment_id <> e.payment_id OR c.outcome NOT IN ('applied', 'late')
"""
# The tables have no foreign keys (migration 010 says why): every reference is checked here.
_ORPHAN_POSTINGS = """
SELECT DISTINCT p.entry_id FROM postings p LEFT JOIN journal_entries e ON e.id = p.entry_id
WHERE e.id IS NULL
"""
_ORPHAN_CALLBACKS = """
SELECT c.id, c.payment_id FROM callbacks c LEFT JOIN payments p ON p.id = c.payment_id
WHERE p.id IS NULL
"""
# One row per payment with what its postings add up to and its latest callback's state.
# Read through a cursor: the check's memory stays flat however big the ledger is.
_PAYMENTS = """
SELECT p.id, p.provider, p.account, p.transaction_id, p.kind, p.state, p.merchant, p.currency,
       p.test, p.paid, p.refund_sum, p.full_refund, p.refunded, p.fee, p.fee_currency,
       p.attention, a.totals, l.state_after
FROM payments p
LEFT JOIN (
    SELECT payment_id, json_agg(json_build_array(account, currency, total)) AS totals
    FROM (
        SELECT e.payment_id, po.account, po.currency, sum(po.amount)::int8 AS total
        FROM postings po JOIN journal_entries e ON e.id = po.entry_id
        GROUP BY e.payment_id, po.account, po.currency
    ) per_account
    GROUP BY payment_id
) a ON a.payment_id = p.id
LEFT JOIN (
    SELECT DISTINCT ON (payment_id) payment_id, state_after FROM callbacks
    ORDER BY payment_id, seq DESC
) l ON l.payment_id = p.id
"""
_POSTINGS_WITHOUT_PAYMENT = """
SELECT DISTINCT e.payment_id FROM journal_entries e
JOIN postings po ON po.entry_id = e.id
LEFT JOIN payments p ON p.id = e.payment_id
WHERE p.id IS NULL
"""
_CALLBACKS = """
SELECT c.id, c.outcome, c.status, c.body ->> 'kind' AS kind, (e.id IS NOT NULL) AS posted
FROM callbacks c LEFT JOIN journal_entries e ON e.id = c.id
"""
_EVENTS_AMONG = "SELECT id FROM events WHERE id = ANY($1::text[])"

_EVENT_OVERRIDE = {
    "info": Status.INFO,
    "unrecognized": Status.UNRECOGNIZED,
    "amount_mismatch": Status.AMOUNT_MISMATCH,
    "no_expectation": Status.AMOUNT_MISMATCH,
}


def _expected_event(row: Any) -> str | None:
    """The type of the event a recorded callback must have produced, or None.

    Events carry the callback's own kind (a payout-kind ``info`` about a payment says so).
    """
    kind = Kind(row["kind"])
    outcome = row["outcome"]
    if outcome in _EVENT_OVERRIDE:
        return event_type(kind, _EVENT_OVERRIDE[outcome])
    if outcome == "applied" or (outcome == "late" and row["posted"]):
        return event_type(kind, Status(row["status"]))
    return None


async def check_ledger(conn: Conn, chunk_size: int = 5000) -> CheckReport:
    """Check every invariant in one snapshot (REPEATABLE READ, read only).

    One snapshot is what makes the check safe on a live ledger: read statement by statement,
    a payment updated between reading its postings and reading its row would show as a breach.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _check(conn, chunk_size)


async def _check(conn: Conn, chunk_size: int) -> CheckReport:
    report = CheckReport()
    seen: dict[str, int] = {}

    for row in await conn.fetch(_UNBALANCED):
        report._add(
            seen,
            "unbalanced",
            f"entry {row['entry_id']} does not balance in {row['currency']}: {row['total']}",
        )
    for row in await conn.fetch(_EMPTY_ENTRIES):
        report._add(seen, "empty", f"entry {row['id']} has no postings")
    for row in await conn.fetch(_ORPHAN_POSTINGS):
        report._add(seen, "orphan", f"postings of entry {row['entry_id']}, which does not exist")
    for row in await conn.fetch(_ORPHAN_CALLBACKS):
        report._add(
            seen,
            "orphan",
            f"callback {row['id']} of payment {row['payment_id']}, which does not exist",
        )
    for row in await conn.fetch(_ENTRY_CALLBACKS):
        report._add(
            seen,
            "entry_callback",
            f"entry {row['id']} (payment {row['payment_id']}) does not match its callback "
            f"(payment {row['callback_payment']}, outcome {row['outcome']})",
        )

    payments = 0
    attention = 0
    rows = await conn.cursor(_PAYMENTS)
    while chunk := await rows.fetch(chunk_size):
        payments += len(chunk)
        for row in chunk:
            attention += row["attention"] is not None
            _check_payment(report, seen, row)
    for row in await conn.fetch(_POSTINGS_WITHOUT_PAYMENT):
        report._add(seen, "orphan", f"postings for unknown payment {row['payment_id']}")

    callbacks = 0
    rows = await conn.cursor(_CALLBACKS)
    while chunk := await rows.fetch(chunk_size):
        callbacks += len(chunk)
        expected = {}
        for row in chunk:
            type_ = _expected_event(row)
            if type_ is not None:
                expected[event_id(str(row["id"]), type_)] = (row["id"], type_)
        found = {r["id"] for r in await conn.fetch(_EVENTS_AMONG, list(expected))}
        for missing in expected.keys() - found:
            callback_id, type_ = expected[missing]
            report._add(seen, "event", f"callback {callback_id}: event {type_} missing")

    report.counts = {
        "payments": payments,
        "callbacks": callbacks,
        "entries": int(await conn.fetchval("SELECT count(*) FROM journal_entries")),
        "postings": int(await conn.fetchval("SELECT count(*) FROM postings")),
        "attention": attention,
    }
    return report


def _check_payment(report: CheckReport, seen: dict[str, int], row: Any) -> None:
    name = f"payment {row['provider']}/{row['account']}/{row['transaction_id']}"
    kind = Kind(row["kind"])
    money = Money(row["paid"], row["refund_sum"], row["full_refund"], row["fee"])
    if row["state"] not in STATES[kind]:
        report._add(seen, "state", f"{name}: state {row['state']} is not a {kind.value} state")
    if row["refunded"] != (money.refunded if kind is Kind.PAYMENT else 0):
        report._add(seen, "refunded", f"{name}: refunded {row['refunded']} != targets")
    if row["state"] not in PAID_STATES and money != Money():
        report._add(seen, "branch", f"{name}: money held in state {row['state']}")
    last_state = row["state_after"]
    if last_state is not None and last_state != row["state"]:
        report._add(
            seen, "history", f"{name}: state {row['state']} but its last callback left {last_state}"
        )
    expected: dict[tuple[str, str], int] = defaultdict(int)
    if money != Money():
        currency = row["currency"]
        if currency is None:
            report._add(seen, "currency", f"{name}: money without a currency")
            return
        accounts = accounts_for(row["provider"], row["account"], row["merchant"], row["test"])
        fee_currency = row["fee_currency"] or currency
        for leg in legs_for(kind, Money(), money, accounts, currency, fee_currency):
            expected[(leg.account, leg.currency)] += leg.amount
    totals = row["totals"]
    if isinstance(totals, str):  # a connection without the json codec
        totals = orjson.loads(totals)
    want = {key: total for key, total in expected.items() if total != 0}
    have = {(a, c): t for a, c, t in totals or () if t != 0}
    if want != have:
        report._add(seen, "postings", f"{name}: postings {have} but targets imply {want}")
