"""Apply a batch of ``CallbackReceived`` to the ledger in one transaction.

Exactly once: within one transaction, (1) take the lock of every payment in the batch, in
key order, whether the payment exists yet or not (``store.lock_payments`` says why advisory
locks), then in one statement read the existing rows, (2) which callbacks are already
recorded - under those locks nobody else can be recording callbacks of these payments - to
skip them and in-batch repeats, and the order expectations, (3) decide each new callback in
delivery order against the payment as the previous one left it, (4) write, in one statement,
payments (one insert or update each), callbacks (``ON CONFLICT DO NOTHING``: a count short
of expected means the locking protocol was bypassed, so the batch is retried rather than
trusted), journal entries and postings, and events (the outbox), then ``NOTIFY`` the relay
once (unless the caller publishes the events itself: ``Policy.notify_relay``). The caller
acks the AMQP messages only after the commit; a crash before it redelivers them and step
(2) makes the replay a no-op.

If a batch keeps failing for a reason other than a lost connection, ``apply_each`` falls
back to one transaction per message, so one bad message does not hold back the others.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog

from contracts.callbacks import CallbackReceived
from contracts.config import Config
from contracts.errors import ConfigError
from contracts.events import build_event, encode_event, routing_key
from contracts.statuses import VerifiedBy
from runtime.errors import is_database_outage
from workers.ledger import store
from workers.ledger.decide import Outcome, Payment, Verdict, decide, new_payment
from workers.ledger.expectations import Expectation, OrderKey, lock_orders
from workers.ledger.store import CallbackRow, Conn, EntryRow, EventRow, PostingRow
from workers.outbox import OutboxEvent

__all__ = [
    "ApplyResult",
    "Incoming",
    "LedgerContention",
    "Policy",
    "apply_batch",
    "apply_each",
    "apply_with_retry",
    "is_connection_error",
]

log = structlog.get_logger(__name__)


class LedgerContention(Exception):
    """Another transaction got to a row first; the batch is retried from the start."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One decoded message: the callback, its id, its JSON body, its correlation id."""

    callback: CallbackReceived
    id: str
    body: bytes  # the message body (a CallbackReceived document), stored verbatim
    correlation_id: str

    @classmethod
    def of(cls, callback: CallbackReceived, correlation_id: str = "") -> Incoming:
        body = orjson.dumps(callback.to_json())
        return cls(callback, callback.id, body, correlation_id or callback.correlation_id)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the ledger needs from the configuration.

    ``[ledger] trust_source_address_without_expectation`` (default false): whether callbacks
    proven only by their source address (Paysepro) may move money without a matching order
    expectation. A per-account ``require_expectation = true|false`` overrides it for that
    account, whatever its proof.
    """

    merchants: Mapping[tuple[str, str], str | None]
    require: Mapping[tuple[str, str], bool]
    trust_source_address: bool = False
    # NOTIFY the relay at commit; False where the caller publishes the events itself
    # (the ledger worker with ``ledger_publishes_events``).
    notify_relay: bool = True

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        trust = config.ledger.get("trust_source_address_without_expectation", False)
        if not isinstance(trust, bool):
            raise ConfigError("ledger.trust_source_address_without_expectation must be a boolean")
        require: dict[tuple[str, str], bool] = {}
        for key, account in config.accounts.items():
            value = account.options.get("require_expectation")
            if value is not None:
                if not isinstance(value, bool):
                    raise ConfigError(
                        f"providers.{key[0]}.{key[1]}.require_expectation must be a boolean"
                    )
                require[key] = value
        return cls(
            merchants={key: acc.merchant for key, acc in config.accounts.items()},
            require=require,
            trust_source_address=trust,
        )

    def merchant(self, provider: str, account: str) -> str | None:
        return self.merchants.get((provider, account))

    def require_expectation(self, callback: CallbackReceived) -> bool:
        explicit = self.require.get((callback.provider, callback.account))
        if explicit is not None:
            return explicit
        return callback.verified_by is VerifiedBy.SOURCE_ADDRESS and not self.trust_source_address


@dataclass(slots=True)
class ApplyResult:
    recorded: int = 0  # new callbacks written
    duplicates: int = 0  # already recorded (redelivery, provider retry) or repeated in batch
    events: int = 0
    entries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    attention: list[tuple[Incoming, Verdict]] = field(default_factory=list)
    # The events written (committed once the transaction is), for a caller that publishes them.
    outbox: list[OutboxEvent] = field(default_factory=list)

    def add(self, other: ApplyResult) -> None:
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.events += other.events
        self.entries += other.entries
        self.outcomes.update(other.outcomes)
        self.attention.extend(other.attention)
        self.outbox.extend(other.outbox)


def _memo(verdict: Verdict) -> str:
    b, a = verdict.before.money, verdict.after.money
    parts = [f"{verdict.outcome.value} {verdict.before.state}->{verdict.after.state}"]
    for name, delta in (
        ("paid", a.paid - b.paid),
        ("refunded", a.refunded - b.refunded),
        ("fee", a.fee - b.fee),
    ):
        if delta:
            parts.append(f"{name} +{delta}")
    return ", ".join(parts)


def _event_row(item: Incoming, verdict: Verdict) -> EventRow:
    callback = item.callback
    assert verdict.event_status is not None
    status = None if verdict.event_status is callback.status else verdict.event_status
    merchant = verdict.after.merchant
    event = build_event(callback, status=status, merchant=merchant, ledger=verdict.ledger)
    return EventRow(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=callback.transaction_id,
        routing_key=routing_key(callback.kind, verdict.event_status, callback.provider),
        provider=callback.provider,
        account=callback.account,
        merchant=merchant,
        correlation_id=item.correlation_id,
        body=encode_event(event),
    )


async def apply_batch(conn: Conn, items: Sequence[Incoming], policy: Policy) -> ApplyResult:
    """Apply ``items`` (in delivery order) in one transaction on ``conn``."""
    async with conn.transaction():
        return await _apply(conn, items, policy)


def _decide_all(
    items: Sequence[Incoming],
    ids: Sequence[str],
    locked: Mapping[str, Payment],
    seen: set[str],
    expectations: Mapping[tuple[str, str, str], Expectation],
    policy: Policy,
) -> tuple[list[Verdict | None], dict[str, Payment]]:
    """Each item's verdict (None: a duplicate) in delivery order, and each payment after."""
    verdicts: list[Verdict | None] = []
    current: dict[str, Payment] = dict(locked)
    done = set(seen)
    for item, pid in zip(items, ids, strict=True):
        if item.id in done:
            verdicts.append(None)
            continue
        done.add(item.id)
        callback = item.callback
        payment = current.get(pid)
        if payment is None:
            payment = new_payment(
                pid, callback, policy.merchant(callback.provider, callback.account)
            )
        order_id = callback.order_id or payment.order_id
        expectation = (
            expectations.get((callback.provider, callback.account, order_id)) if order_id else None
        )
        verdict = decide(payment, callback, expectation, policy.require_expectation(callback))
        verdicts.append(verdict)
        current[pid] = verdict.after
    return verdicts, current


async def _apply(conn: Conn, items: Sequence[Incoming], policy: Policy) -> ApplyResult:
    ids = [
        store.payment_id(i.callback.provider, i.callback.account, i.callback.transaction_id)
        for i in items
    ]
    await store.lock_payments(conn, sorted(set(ids)))
    read = await store.read_batch(conn, ids, [i.id for i in items], _named_orders(items))
    locked = read.payments
    expectations = read.expectations
    verdicts, current = _decide_all(items, ids, locked, read.recorded, expectations, policy)
    await _recheck_held(conn, items, ids, locked, verdicts, expectations)

    result = ApplyResult()
    callbacks: list[CallbackRow] = []
    entries: list[EntryRow] = []
    postings: list[PostingRow] = []
    events: list[EventRow] = []
    for item, pid, verdict in zip(items, ids, verdicts, strict=True):
        if verdict is None:
            result.duplicates += 1
            continue
        callback = item.callback
        result.outcomes[verdict.outcome.value] += 1
        if verdict.reason is not None:
            result.attention.append((item, verdict))
        callbacks.append(
            CallbackRow(
                id=item.id,
                payment_id=pid,
                status=callback.status.value,
                provider_status=callback.provider_status,
                variant=callback.variant,
                outcome=verdict.outcome.value,
                reason=verdict.reason,
                state_before=verdict.before.state,
                state_after=verdict.after.state,
                correlation_id=item.correlation_id,
                body=item.body,
            )
        )
        if verdict.legs:
            entries.append(EntryRow(item.id, pid, _memo(verdict)))
            postings.extend(
                PostingRow(item.id, n, leg.account, leg.currency, leg.amount)
                for n, leg in enumerate(verdict.legs)
            )
        if verdict.event_status is not None:
            events.append(_event_row(item, verdict))

    created = sorted((p for pid, p in current.items() if pid not in locked), key=_by_id)
    written = await store.write_batch(
        conn,
        store.BatchWrite(
            created=created,
            updated=[p for pid, p in current.items() if pid in locked and p != locked[pid]],
            callbacks=callbacks,
            entries=entries,
            postings=postings,
            events=events,
        ),
    )
    # Short counts mean a conflict skipped a row the locks should have kept to this batch:
    # raising rolls the whole statement's work back, and the batch is retried.
    if written.payments != len(created):
        raise LedgerContention("a payment this batch creates exists: the locks were bypassed")
    if written.callbacks != len(callbacks):
        raise LedgerContention("a callback this batch records was recorded concurrently")
    result.events = len(written.events)
    result.outbox = [
        OutboxEvent(written.events[e.id], e.id, e.type, e.routing_key, e.correlation_id, e.body)
        for e in events
        if e.id in written.events
    ]
    if result.outbox and policy.notify_relay:
        await store.notify_outbox(conn, [e.seq for e in result.outbox])
    result.recorded = len(callbacks)
    result.entries = len(entries)
    return result


def _named_orders(items: Sequence[Incoming]) -> set[OrderKey]:
    """The orders the callbacks name; ``read_batch`` adds those their payments carry."""
    return {
        (i.callback.provider, i.callback.account, i.callback.order_id)
        for i in items
        if i.callback.order_id
    }


# What a registration of the callback's order releases (orders.py, _HELD).
_HOLDS = frozenset({Outcome.NO_EXPECTATION, Outcome.AMOUNT_MISMATCH})


async def _recheck_held(
    conn: Conn,
    items: Sequence[Incoming],
    ids: Sequence[str],
    locked: Mapping[str, Payment],
    verdicts: Sequence[Verdict | None],
    expectations: Mapping[OrderKey, Expectation],
) -> None:
    """Before committing a hold, make sure no registration of its order slipped in.

    Under the orders' locks (``expectations.lock_orders``) a registration either committed
    before - then it is read here and the batch is decided again - or waits for this
    commit and then releases what it holds. Only batches that hold something pay for it.
    """
    held: set[OrderKey] = set()
    for item, pid, verdict in zip(items, ids, verdicts, strict=True):
        if verdict is None or verdict.outcome not in _HOLDS:
            continue
        row = locked.get(pid)
        order = item.callback.order_id or (row.order_id if row is not None else None)
        if order:
            held.add((item.callback.provider, item.callback.account, order))
    if not held:
        return
    await lock_orders(conn, held)
    now = await store.load_expectations(conn, held)
    if now != {key: exp for key, exp in expectations.items() if key in held}:
        raise LedgerContention("an order expectation was registered meanwhile")


def _by_id(payment: Payment) -> str:
    return payment.id


def is_connection_error(exc: BaseException) -> bool:
    """The database went away (or is refusing work for now): not the messages' fault.

    The runtime's one list (``runtime.errors``): a list of its own here once lacked the
    protocol error a fast Postgres shutdown cuts a query with, so a restart failed genuine
    messages (nacked, counted towards their delivery limit) instead of waiting.
    """
    return is_database_outage(exc)


_RETRYABLE = (
    LedgerContention,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


async def apply_with_retry(
    pool: asyncpg.Pool[Any], items: Sequence[Incoming], policy: Policy, attempts: int = 6
) -> ApplyResult:
    """``apply_batch`` on a pooled connection, retrying races (contention, deadlock)."""
    for attempt in range(attempts):
        try:
            async with pool.acquire() as conn:
                return await apply_batch(conn, items, policy)
        except _RETRYABLE as exc:
            if attempt == attempts - 1:
                raise
            log.info("ledger.batch_retry", reason=type(exc).__name__, attempt=attempt + 1)
            await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover


async def apply_each(
    pool: asyncpg.Pool[Any], items: Sequence[Incoming], policy: Policy
) -> tuple[ApplyResult, list[str | None]]:
    """Apply ``items`` as one batch, or else one transaction each.

    Returns the combined result and, per item, ``None`` (applied or duplicate) or why it
    failed alone. A lost database connection is raised: the caller retries the whole batch
    later, since no message is to blame.
    """
    try:
        return await apply_with_retry(pool, items, policy), [None] * len(items)
    except Exception as exc:
        if is_connection_error(exc):
            raise
        if len(items) == 1:
            return ApplyResult(), [_why(exc)]
        log.warning("ledger.batch_failed", error=_why(exc), size=len(items))
    total = ApplyResult()
    failures: list[str | None] = []
    for item in items:
        try:
            total.add(await apply_with_retry(pool, [item], policy))
            failures.append(None)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            failures.append(_why(exc))
    return total, failures


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
