"""The state machine and money rules as pure functions (no servers)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.statuses import Kind, Status
from workers.ledger.decide import Outcome, decide, new_payment
from workers.ledger.expectations import Expectation
from workers.ledger.postings import Money, accounts_for, legs_for
from workers.ledger.states import (
    NEW,
    RANK,
    REFUND_STATES,
    STATES,
    TERMINAL,
    TRANSITIONS,
    UNPAID_STATES,
    Move,
    classify,
)

from .factory import callback
from .model import Model

S = Status


def test_every_state_has_a_rank_and_every_status_state_exists() -> None:
    for kind, table in TRANSITIONS.items():
        assert set(table) <= set(RANK), kind
        for targets in table.values():
            assert targets <= set(table), kind
    normalized = {s.value for s in Status} - {"info", "amount_mismatch", "unrecognized"}
    assert STATES[Kind.PAYMENT] == normalized | {NEW}
    assert not STATES[Kind.PAYOUT] & REFUND_STATES


def test_moves_only_go_forward() -> None:
    for table in TRANSITIONS.values():
        for source, targets in table.items():
            for target in targets:
                assert RANK[target] > RANK[source], (source, target)


def test_terminal_states_are_left_only_into_refund_states() -> None:
    for table in TRANSITIONS.values():
        for state in TERMINAL & set(table):
            assert table[state] <= REFUND_STATES, state
    for state in UNPAID_STATES | {"refunded"}:
        assert TRANSITIONS[Kind.PAYMENT][state] == frozenset()


def test_the_machine_is_transitive_on_each_branch() -> None:
    # Required for order independence: if a -> b -> c is allowed, a -> c must be too, or a
    # permuted history (c arriving before b) would end elsewhere.
    for table in TRANSITIONS.values():
        for a, bs in table.items():
            for b in bs:
                assert table[b] <= bs, (a, b)


@pytest.mark.parametrize(
    ("state", "status", "move"),
    [
        ("succeeded", S.PENDING, Move.STALE),  # a late pending is history only
        ("succeeded", S.INFO, Move.INFO),  # info never changes state
        ("pending", S.INFO, Move.INFO),
        ("succeeded", S.REFUNDED, Move.ADVANCE),
        ("refunded", S.SUCCEEDED, Move.LATE),  # permuted: money still counts
        ("partially_refunded", S.PARTIALLY_REFUNDED, Move.LATE),  # a second partial refund
        ("failed", S.SUCCEEDED, Move.CONFLICT),  # terminal is never left
        ("succeeded", S.FAILED, Move.CONFLICT),
        ("failed", S.EXPIRED, Move.STALE),
        ("new", S.REFUNDED, Move.ADVANCE),
        ("pending", S.UNRECOGNIZED, Move.UNRECOGNIZED),
        ("partially_paid", S.SUCCEEDED, Move.ADVANCE),
    ],
)
def test_classify_payment(state: str, status: Status, move: Move) -> None:
    assert classify(Kind.PAYMENT, state, status) is move


def test_payouts_have_no_refunds() -> None:
    for status in (S.REFUNDED, S.PARTIALLY_REFUNDED, S.REFUND_PENDING, S.REFUND_FAILED):
        assert classify(Kind.PAYOUT, "succeeded", status) is Move.CONFLICT
    assert classify(Kind.PAYOUT, "pending", S.SUCCEEDED) is Move.ADVANCE


def test_postings_balance_and_follow_the_rules() -> None:
    accounts = accounts_for("paycore", "main", "shop", test=False)
    legs = legs_for(
        Kind.PAYMENT, Money(), Money(paid=1000, refund_sum=300, fee=25), accounts, "USD", "USD"
    )
    assert sum(leg.amount for leg in legs) == 0
    net = {}
    for leg in legs:
        net[leg.account] = net.get(leg.account, 0) + leg.amount
    assert net == {
        "provider_clearing:paycore:main": 700,
        "merchant_balance:shop": -700 + 25,
        "provider_fees:paycore": -25,
    }
    payout = legs_for(Kind.PAYOUT, Money(), Money(paid=500), accounts, "USD", "USD")
    assert [(leg.account, leg.amount) for leg in payout] == [
        ("merchant_balance:shop", 500),
        ("provider_clearing:paycore:main", -500),
    ]
    assert accounts_for("paysera", "x", None, test=True).merchant == "test:unallocated:paysera:x"


def test_partial_then_success_posts_the_remainder() -> None:
    p = new_payment("id", callback(S.PARTIALLY_PAID, paid_amount=400), "shop")
    first = decide(p, callback(S.PARTIALLY_PAID, paid_amount=400), None, False)
    assert first.after.money.paid == 400
    second = decide(first.after, callback(S.SUCCEEDED), None, False)
    assert second.outcome is Outcome.APPLIED
    assert [leg.amount for leg in second.legs] == [850, -850]


def test_refunds_never_exceed_what_was_paid() -> None:
    p = decide(
        new_payment("id", callback(S.SUCCEEDED), None), callback(S.SUCCEEDED), None, False
    ).after
    one = decide(p, callback(S.PARTIALLY_REFUNDED, refund_amount=1000, variant="a"), None, False)
    two = decide(
        one.after, callback(S.PARTIALLY_REFUNDED, refund_amount=1000, variant="b"), None, False
    )
    assert two.after.money.refunded == 1250
    assert [leg.amount for leg in two.legs] == [250, -250]


def test_mismatch_moves_nothing_and_emits_amount_mismatch() -> None:
    exp = Expectation("shop", "paysera", "main", "ORD-1", 999, "EUR", False)
    cb = callback(S.SUCCEEDED)
    verdict = decide(new_payment("id", cb, "shop"), cb, exp, False)
    assert verdict.outcome is Outcome.AMOUNT_MISMATCH
    assert verdict.legs == ()
    assert verdict.event_status is Status.AMOUNT_MISMATCH
    assert verdict.after.state == NEW
    assert verdict.ledger is not None
    assert "payment_status" not in verdict.ledger  # "new" is not a status consumers know


# A coherent history per payment; the model must reach the same result in every order.
_HISTORIES = [
    [
        callback(S.PENDING),
        callback(S.PARTIALLY_PAID, paid_amount=500),
        callback(S.SUCCEEDED, fee_amount=30),
        callback(S.REFUND_PENDING),
        callback(S.PARTIALLY_REFUNDED, refund_amount=200, variant="r1"),
        callback(S.PARTIALLY_REFUNDED, refund_amount=300, variant="r2"),
        callback(S.REFUNDED),
    ],
    [callback(S.PENDING), callback(S.EXPIRED), callback(S.EXPIRED, variant="again")],
    [
        callback(S.PENDING, kind=Kind.PAYOUT),
        callback(S.PARTIALLY_PAID, kind=Kind.PAYOUT, paid_amount=100),
        callback(S.SUCCEEDED, kind=Kind.PAYOUT),
    ],
]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_model_is_order_independent_on_coherent_histories(data: st.DataObject) -> None:
    history = data.draw(st.sampled_from(_HISTORIES))
    reference = Model({("paysera", "main"): "shop"})
    for cb in history:
        reference.apply(cb)
    permuted = Model({("paysera", "main"): "shop"})
    for cb in data.draw(st.permutations(history)):
        permuted.apply(cb)
    assert permuted.states() == reference.states()
    assert permuted.balances() == reference.balances()


def test_decide_agrees_with_the_model_on_every_pair_of_statuses() -> None:
    statuses = [s for s in Status if s is not S.AMOUNT_MISMATCH]
    for first, second in itertools.product(statuses, repeat=2):
        a = callback(
            first,
            paid_amount=600 if first is S.PARTIALLY_PAID else None,
            refund_amount=100,
            variant="1",
        )
        b = callback(
            second,
            paid_amount=700 if second is S.PARTIALLY_PAID else None,
            refund_amount=100,
            variant="2",
        )
        model = Model({("paysera", "main"): "shop"})
        model.apply(a)
        model.apply(b)
        p = new_payment("id", a, "shop")
        p = decide(p, a, None, False).after
        p = decide(p, b, None, False).after
        want = model.states()[("paysera", "main", "T1")]
        got = {
            "state": p.state,
            "paid": p.money.paid,
            "refunded": p.money.refunded,
            "fee": p.money.fee,
        }
        assert got == want, (first, second)


def test_payment_id_is_a_plain_uuid5() -> None:
    import uuid

    from workers.ledger import store

    for key in (("paysera", "main", "T1"), ("paycore", "acc", "cpi_ü")):
        expected = uuid.uuid5(store._PAYMENT_NAMESPACE, "\x1f".join(key))
        assert store.payment_id(*key) == str(expected)


def test_lock_keys_fit_a_signed_int4() -> None:
    from workers.ledger.store import lock_key

    assert lock_key("7fffffff-0000-5000-8000-000000000000") == 2**31 - 1
    assert lock_key("80000000-0000-5000-8000-000000000000") == -(2**31)
    assert lock_key("ffffffff-0000-5000-8000-000000000000") == -1
