"""Hypothesis state machines: the real ledger against the reference model (model.py).

1. ``direct``: random callbacks - duplicates, conflicting statuses, partials, refunds,
   payouts, mismatches, currency and test-flag clashes - applied through ``apply_batch`` in
   random batch sizes; the model sees the same order, so even incoherent histories must agree.
2. ``consumers``: coherent provider histories (what a provider can really send, in any order,
   any number of times) published to the ledger queue and applied by several concurrent
   ``LedgerWorker``s with prefetch > 1; delivery order is up to the broker, and the rules are
   order independent for such histories, so the final state must equal the model's.

Each example starts from empty ledger tables; ``ledger check`` must pass at the end of each.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import workers.db
from contracts.callbacks import CallbackReceived
from contracts.config import Config, Settings
from contracts.statuses import Kind, Status
from contracts.topology import Topology
from workers import amqp
from workers.ledger.apply import Incoming, Policy, apply_batch
from workers.ledger.check import check_ledger
from workers.ledger.expectations import Expectation
from workers.ledger.orders import register_order

from .factory import ACCOUNT, MERCHANT, PROVIDERS, callback, make_config
from .harness import (
    LoopThread,
    ledger_balances,
    ledger_states,
    publish_callbacks,
    start_workers,
    truncate_ledger,
)
from .model import Model

S = Status

# PAYHOOK_TEST_EXAMPLES_SCALE=20 scripts/test tests/ledger/test_stateful.py runs 20 times as
# many examples: for a bug hunt after touching the ledger rules (CI keeps the default).
SCALE = max(1, int(os.environ.get("PAYHOOK_TEST_EXAMPLES_SCALE", "1")))

# ----------------------------------------------------------------------- shared resources


class Resources:
    """A loop thread with a pool (and for consumers, running workers) reused across examples."""

    def __init__(self, database_url: str) -> None:
        self.thread = LoopThread()
        self.config: Config = make_config()
        self.policy = Policy.from_config(self.config)
        self.pool: asyncpg.Pool[Any] = self.thread.run(
            workers.db.create_pool(database_url, min_size=2, max_size=6)
        )
        self.stack = contextlib.AsyncExitStack()

    def close(self) -> None:
        self.thread.run(self.stack.aclose())
        self.thread.run(self.pool.close())
        self.thread.close()


def new_model() -> Model:
    return Model({(p, ACCOUNT): MERCHANT for p in PROVIDERS})


async def register(pool: asyncpg.Pool[Any], policy: Policy, model: Model, exp: Expectation) -> str:
    """Register (and release what the order held) in the ledger and in the model alike."""
    result, _ = await register_order(pool, exp, policy)
    if result != "conflict":
        model.expect(exp.provider, exp.account, exp.order_id, exp.amount, exp.currency, exp.test)
    return result


async def compare(pool: asyncpg.Pool[Any], model: Model) -> None:
    async with pool.acquire() as conn:
        assert await ledger_states(conn) == model.states()
        assert await ledger_balances(conn) == model.balances()


async def final_check(pool: asyncpg.Pool[Any]) -> None:
    async with pool.acquire() as conn:
        report = await check_ledger(conn)
    assert report.ok, report.breaches


# ------------------------------------------------------------ 1. direct, exact order

_PAYMENTS = [  # (provider, transaction id, usual kind)
    ("paysera", "T1", Kind.PAYMENT),
    ("paycore", "cpi_2", Kind.PAYMENT),
    ("paysepro", "T3", Kind.PAYMENT),
    ("paypro", "T4", Kind.PAYOUT),
    ("paygol", "T5", Kind.PAYMENT),
]


@st.composite
def any_callback(draw: st.DrawFn) -> CallbackReceived:
    provider, txid, kind = draw(st.sampled_from(_PAYMENTS))
    if draw(st.integers(0, 19)) == 0:
        kind = Kind.PAYOUT if kind is Kind.PAYMENT else Kind.PAYMENT
    status = draw(st.sampled_from(list(Status)))
    return callback(
        status,
        txid,
        provider=provider,
        kind=kind,
        amount=draw(st.sampled_from([1250, 1250, 1000, None])),
        currency=draw(st.sampled_from(["EUR", "EUR", "EUR", "USD", None])),
        paid_amount=draw(st.sampled_from([None, None, 300, 600, 1250])),
        paid_currency=draw(st.sampled_from([None, None, None, "USD"])),
        refund_amount=draw(st.sampled_from([None, 100, 400, 2000])),
        fee_amount=draw(st.sampled_from([None, None, 20, 30])),
        fee_currency=draw(st.sampled_from([None, None, "USD"])),
        order_id=draw(st.sampled_from([f"ORD-{txid}", f"ORD-{txid}", None])),
        test=draw(st.integers(0, 9)) == 0,
        variant=draw(st.sampled_from(["", "", "a", "b"])),
    )


class DirectMachine(RuleBasedStateMachine):
    res: Resources

    def __init__(self) -> None:
        super().__init__()
        self.model = new_model()
        self.pending: list[CallbackReceived] = []
        self.sent: list[CallbackReceived] = []

    @initialize()
    def empty_ledger(self) -> None:
        self.res.thread.run(self._truncate())

    async def _truncate(self) -> None:
        async with self.res.pool.acquire() as conn:
            await truncate_ledger(conn)

    @rule(cb=any_callback())
    def send(self, cb: CallbackReceived) -> None:
        self.pending.append(cb)
        self.sent.append(cb)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        self.pending.append(data.draw(st.sampled_from(self.sent)))

    @rule(
        payment=st.sampled_from(_PAYMENTS),
        amount=st.sampled_from([1250, 1000]),
        currency=st.sampled_from(["EUR", "USD"]),
        test=st.booleans(),
    )
    def expect(
        self, payment: tuple[str, str, Kind], amount: int, currency: str, test: bool
    ) -> None:
        provider, txid, _ = payment
        exp = Expectation(MERCHANT, provider, ACCOUNT, f"ORD-{txid}", amount, currency, test)
        self.res.thread.run(self._expect(exp))

    async def _expect(self, exp: Expectation) -> None:
        async with self.res.pool.acquire() as conn:
            before = await conn.fetchval(
                "SELECT amount FROM order_expectations WHERE order_id = $1", exp.order_id
            )
        result = await register(self.res.pool, self.res.policy, self.model, exp)
        assert result != "conflict" or before is not None

    @precondition(lambda self: self.pending)
    @rule(seed=st.integers(0, 2**16))
    def flush(self, seed: int) -> None:
        batches: list[list[CallbackReceived]] = []
        rng = random.Random(seed)
        rest = list(self.pending)
        while rest:
            size = rng.randint(1, 6)
            batches.append(rest[:size])
            rest = rest[size:]
        self.res.thread.run(self._apply(batches))
        for cb in self.pending:
            self.model.apply(cb)
        self.pending.clear()
        self.res.thread.run(compare(self.res.pool, self.model))

    async def _apply(self, batches: list[list[CallbackReceived]]) -> None:
        async with self.res.pool.acquire() as conn:
            for batch in batches:
                await apply_batch(conn, [Incoming.of(cb) for cb in batch], self.res.policy)

    def teardown(self) -> None:
        if self.pending:
            self.flush(0)
        self.res.thread.run(final_check(self.res.pool))


@pytest.mark.timeout(120 * SCALE)
def test_direct_apply_matches_the_model(database_url: str, db: Any) -> None:
    res = Resources(database_url)
    try:
        DirectMachine.res = res
        run_state_machine_as_test(
            DirectMachine,
            settings=settings(
                max_examples=40 * SCALE,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        res.close()


# --------------------------------------------------- 2. real consumers, concurrently


@st.composite
def history(draw: st.DrawFn, provider: str, txid: str) -> tuple[list[CallbackReceived], Any]:
    """A coherent provider history for one payment, plus the expectation to register."""
    amount = draw(st.sampled_from([1000, 1250, 2200]))
    currency = draw(st.sampled_from(["EUR", "USD"]))
    test = draw(st.integers(0, 4)) == 0
    fee = draw(st.sampled_from([None, 15, 30])) if provider == "paycore" else None
    common = {
        "provider": provider,
        "amount": amount,
        "currency": currency,
        "test": test,
        "order_id": f"ORD-{txid}",
    }
    path = draw(st.sampled_from(["paid", "paid", "paid", "unpaid", "payout", "payout_failed"]))
    if path == "paid":
        facts = [
            callback(S.PENDING, txid, **common),
            callback(S.PARTIALLY_PAID, txid, paid_amount=amount // 2, **common),
            callback(S.SUCCEEDED, txid, fee_amount=fee, **common),
            callback(S.REFUND_PENDING, txid, **common),
            callback(
                S.PARTIALLY_REFUNDED,
                txid,
                refund_amount=300,
                variant="r1",
                fee_amount=fee,
                **common,
            ),
            callback(S.PARTIALLY_REFUNDED, txid, refund_amount=amount // 2, variant="r2", **common),
            callback(S.REFUND_FAILED, txid, **common),
            callback(S.REFUNDED, txid, **common),
        ]
    elif path == "unpaid":
        end = draw(st.sampled_from([S.FAILED, S.EXPIRED, S.CANCELLED]))
        facts = [
            callback(S.PENDING, txid, **common),
            callback(end, txid, **common),
            callback(end, txid, variant="again", **common),
        ]
    elif path == "payout":
        facts = [
            callback(S.PENDING, txid, kind=Kind.PAYOUT, **common),
            callback(S.PARTIALLY_PAID, txid, kind=Kind.PAYOUT, paid_amount=amount // 4, **common),
            callback(S.SUCCEEDED, txid, kind=Kind.PAYOUT, fee_amount=fee, **common),
        ]
    else:
        facts = [
            callback(S.PENDING, txid, kind=Kind.PAYOUT, **common),
            callback(S.FAILED, txid, kind=Kind.PAYOUT, **common),
        ]
    keep = draw(st.lists(st.sampled_from(range(len(facts))), min_size=1, unique=True))
    facts = [facts[i] for i in sorted(keep)]
    if draw(st.integers(0, 5)) == 0:
        facts.append(callback(S.INFO, txid, kind=facts[0].kind, **common))
    if draw(st.integers(0, 7)) == 0:
        facts.append(
            callback(S.UNRECOGNIZED, txid, kind=facts[0].kind, provider_status="x9", **common)
        )
    exp_kind = draw(st.sampled_from(["none", "none", "match", "amount", "currency", "test"]))
    expectation = None
    if exp_kind != "none":
        expectation = Expectation(
            MERCHANT,
            provider,
            ACCOUNT,
            f"ORD-{txid}",
            amount + (1 if exp_kind == "amount" else 0),
            ("EUR" if currency == "USD" else "USD") if exp_kind == "currency" else currency,
            (not test) if exp_kind == "test" else test,
        )
    return facts, expectation


class ConsumersMachine(RuleBasedStateMachine):
    res: Resources
    settings: Settings
    topology: Topology

    def __init__(self) -> None:
        super().__init__()
        self.model = new_model()
        self.histories: list[list[CallbackReceived]] = []
        self.pending: list[CallbackReceived] = []

    @initialize(data=st.data())
    def payments(self, data: st.DataObject) -> None:
        self.res.thread.run(self._truncate())
        count = data.draw(st.integers(1, 5), label="payments")
        expectations = []
        for n in range(count):
            provider = data.draw(st.sampled_from(list(PROVIDERS)))
            facts, expectation = data.draw(history(provider, f"X{n}"))
            self.histories.append(facts)
            if expectation is not None:
                expectations.append(expectation)
        self.res.thread.run(self._expect(expectations))

    async def _truncate(self) -> None:
        async with self.res.pool.acquire() as conn:
            await truncate_ledger(conn)

    async def _expect(self, expectations: list[Expectation]) -> None:
        for exp in expectations:
            await register(self.res.pool, self.res.policy, self.model, exp)

    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        facts = data.draw(st.sampled_from(self.histories))
        for cb in data.draw(st.lists(st.sampled_from(facts), min_size=1, max_size=4)):
            self.pending.append(cb)

    @precondition(lambda self: self.pending)
    @rule()
    def flush(self) -> None:
        self.res.thread.run(self._deliver(list(self.pending)))
        for cb in self.pending:
            self.model.apply(cb)
        self.pending.clear()
        self.res.thread.run(compare(self.res.pool, self.model))

    async def _deliver(self, callbacks: list[CallbackReceived]) -> None:
        workers = self.res.workers  # type: ignore[attr-defined]
        before = workers.handled()
        await publish_callbacks(self.res.publisher, self.topology, callbacks)  # type: ignore[attr-defined]
        await workers.wait_handled(before + len(callbacks))

    @invariant()
    def nothing_failed(self) -> None:
        for worker in self.res.workers.workers:  # type: ignore[attr-defined]
            assert worker.totals.outcomes.get("invalid", 0) == 0

    def teardown(self) -> None:
        if self.pending:
            self.flush()
        self.res.thread.run(final_check(self.res.pool))


async def _start(res: Resources, settings_: Settings, topology: Topology) -> None:
    connection = await amqp.connect(settings_.amqp_url, name="ledger-stateful-publisher")
    res.stack.push_async_callback(connection.close)
    res.publisher = await connection.channel(publisher_confirms=True)  # type: ignore[attr-defined]
    await amqp.declare_topology(res.publisher, topology)  # type: ignore[attr-defined]
    res.workers = await start_workers(  # type: ignore[attr-defined]
        res.stack,
        count=3,
        settings=settings_,
        config=res.config,
        pool=res.pool,
        topology=topology,
    )


@pytest.mark.timeout(300 * SCALE)
def test_concurrent_consumers_match_the_model(
    database_url: str, db: Any, settings: Settings, namespace: str
) -> None:
    res = Resources(database_url)
    topology = Topology(namespace)
    try:
        res.thread.run(_start(res, settings, topology))
        ConsumersMachine.res = res
        ConsumersMachine.settings = settings
        ConsumersMachine.topology = topology
        run_state_machine_as_test(
            ConsumersMachine,
            settings=settings_for_consumers(),
        )
        # Every consumer took part: the histories really were applied concurrently.
        shares = [w.totals.recorded + w.totals.duplicates for w in res.workers.workers]  # type: ignore[attr-defined]
        assert all(shares), shares
    finally:
        res.close()


def settings_for_consumers() -> Any:
    return settings(
        max_examples=20 * SCALE,
        stateful_step_count=8,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
