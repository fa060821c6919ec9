"""The ledger's verdict on one new callback for one payment (pure: no I/O).

``decide`` combines the state machine (``states``), the expectation check (``expectations``)
and the money rules (``postings``) in this order:

1. ``info`` / ``unrecognized``: recorded, an event, nothing else.
2. A kind the payment does not have, or a move the state machine refuses: history only
   (``stale``, or ``conflict`` flagged for an operator).
3. An expectation exists for the order and disagrees: ``amount_mismatch`` (event, no money).
   No expectation while one is required (accounts verified only by source address, by
   default) for a fact that moves money: ``no_expectation`` (an ``amount_mismatch`` event
   with that reason, no money).
4. A currency or test flag other than the payment's: ``conflict``.
5. Money: new targets, legs for the difference. A money fact without its amount: ``invalid``.
6. ``applied`` (state moved) or ``late`` (paid branch, state stays, money may move).

An event is emitted for applied facts that moved the state or money, for info and
unrecognized callbacks, and for mismatches; never for stale, conflict or invalid ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from contracts.callbacks import CallbackReceived
from contracts.statuses import Kind, Status
from workers.ledger.expectations import Expectation, mismatch
from workers.ledger.postings import Leg, Money, accounts_for, legs_for, money_after, paid_of
from workers.ledger.states import NEW, PAID_STATES, Move, classify

__all__ = ["RELEASE_MARK", "Outcome", "Payment", "Verdict", "decide", "new_payment"]

# Ends a held callback's variant when it is decided again under a registered expectation
# (workers/ledger/orders.py); the part after it names the terms.
RELEASE_MARK = "~expectation:"


class Outcome(StrEnum):
    APPLIED = "applied"
    LATE = "late"
    STALE = "stale"
    CONFLICT = "conflict"
    INVALID = "invalid"
    AMOUNT_MISMATCH = "amount_mismatch"
    NO_EXPECTATION = "no_expectation"
    INFO = "info"
    UNRECOGNIZED = "unrecognized"


# Outcomes an operator should look at: the payment row keeps the latest as ``attention``.
_ATTENTION = frozenset(
    {Outcome.CONFLICT, Outcome.INVALID, Outcome.AMOUNT_MISMATCH, Outcome.NO_EXPECTATION}
)


@dataclass(frozen=True, slots=True)
class Payment:
    """A snapshot of one ``payments`` row."""

    id: str
    provider: str
    account: str
    transaction_id: str
    kind: Kind
    state: str
    merchant: str | None
    order_id: str | None
    currency: str | None
    amount: int | None
    test: bool
    money: Money
    fee_currency: str | None = None
    attention: str | None = None


def new_payment(payment_id: str, callback: CallbackReceived, merchant: str | None) -> Payment:
    """The row a payment's first callback creates, before that callback is applied to it."""
    return Payment(
        id=payment_id,
        provider=callback.provider,
        account=callback.account,
        transaction_id=callback.transaction_id,
        kind=callback.kind,
        state=NEW,
        merchant=merchant,
        order_id=callback.order_id,
        currency=callback.currency,
        amount=callback.amount,
        test=callback.test,
        money=Money(),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str | None
    before: Payment
    after: Payment
    legs: tuple[Leg, ...] = ()
    event_status: Status | None = None  # None: no event
    ledger: Mapping[str, Any] | None = None  # the event's ``data.ledger``


def _history(outcome: Outcome, reason: str, payment: Payment) -> Verdict:
    """Recorded, nothing moves; outcomes an operator should see are kept on the payment."""
    after = payment
    if outcome in _ATTENTION:
        after = replace(payment, attention=f"{outcome.value}: {reason}")
    return Verdict(outcome, reason, payment, after)


_HOLDS = (f"{Outcome.AMOUNT_MISMATCH.value}:", f"{Outcome.NO_EXPECTATION.value}:")


def _attention_after(attention: str | None, callback: CallbackReceived) -> str | None:
    """A released callback got past the check that held it: that hold needs nobody now.

    Other flags (conflicts, invalid facts) stay until an operator has seen them.
    """
    if attention is not None and attention.startswith(_HOLDS) and RELEASE_MARK in callback.variant:
        return None
    return attention


def _ledger_view(payment: Payment, **extra: Any) -> dict[str, Any]:
    view: dict[str, Any] = {}
    if payment.state != NEW:  # "new" is not a status consumers know: say nothing instead
        view["payment_status"] = payment.state
    view.update(extra)
    return view


def decide(
    payment: Payment,
    callback: CallbackReceived,
    expectation: Expectation | None,
    require_expectation: bool,
) -> Verdict:
    move = classify(payment.kind, payment.state, callback.status)
    if move is Move.INFO:
        return Verdict(Outcome.INFO, None, payment, payment, (), Status.INFO, _ledger_view(payment))
    if move is Move.UNRECOGNIZED:
        return Verdict(
            Outcome.UNRECOGNIZED,
            f"provider status {callback.provider_status!r} is not mapped",
            payment,
            payment,
            (),
            Status.UNRECOGNIZED,
            _ledger_view(payment, reason="unrecognized provider status"),
        )
    if callback.kind is not payment.kind:
        return _history(
            Outcome.CONFLICT, f"{callback.kind.value} callback for a {payment.kind.value}", payment
        )
    if move is Move.STALE:
        return _history(Outcome.STALE, f"{callback.status.value} after {payment.state}", payment)
    if move is Move.CONFLICT:
        return _history(Outcome.CONFLICT, f"{callback.status.value} after {payment.state}", payment)

    currency = payment.currency or callback.currency
    paid = paid_of(callback, currency) if currency is not None else None
    if expectation is not None:
        fields = mismatch(expectation, callback, paid)
        if fields is not None:
            verdict = _history(
                Outcome.AMOUNT_MISMATCH, f"differs from expectation: {fields}", payment
            )
            expected = expectation.to_json()
            return replace(
                verdict,
                event_status=Status.AMOUNT_MISMATCH,
                ledger=_ledger_view(payment, reason=f"mismatch:{fields}", expected=expected),
            )
    elif require_expectation and callback.status.value in PAID_STATES:
        verdict = _history(Outcome.NO_EXPECTATION, "no order expectation registered", payment)
        return replace(
            verdict,
            event_status=Status.AMOUNT_MISMATCH,
            ledger=_ledger_view(payment, reason="no_expectation"),
        )

    if callback.currency is not None and currency != callback.currency:
        return _history(
            Outcome.CONFLICT, f"currency {callback.currency} for a {currency} payment", payment
        )
    if callback.test is not payment.test:
        return _history(Outcome.CONFLICT, "test flag differs from the payment's", payment)

    money = payment.money
    fee_currency = payment.fee_currency
    if callback.status.value in PAID_STATES:
        if currency is None:
            return _history(Outcome.INVALID, f"{callback.status.value} without a currency", payment)
        found = money_after(payment.kind, money, callback, currency, fee_currency)
        if isinstance(found, str):
            return _history(Outcome.INVALID, found, payment)
        if found.fee != money.fee and fee_currency is None:
            fee_currency = callback.fee_currency or currency
        money = found

    state = callback.status.value if move is Move.ADVANCE else payment.state
    # Spelled out rather than dataclasses.replace: this runs for every callback, and replace
    # (which introspects the fields each time) was a third of decide's cost.
    after = Payment(
        id=payment.id,
        provider=payment.provider,
        account=payment.account,
        transaction_id=payment.transaction_id,
        kind=payment.kind,
        state=state,
        merchant=payment.merchant,
        order_id=payment.order_id or callback.order_id,
        currency=currency,
        amount=payment.amount if payment.amount is not None else callback.amount,
        test=payment.test,
        money=money,
        fee_currency=fee_currency,
        attention=_attention_after(payment.attention, callback),
    )
    legs: tuple[Leg, ...] = ()
    if money != payment.money:
        assert currency is not None  # money moved only when a currency was known
        accounts = accounts_for(payment.provider, payment.account, payment.merchant, payment.test)
        legs = legs_for(
            payment.kind, payment.money, money, accounts, currency, fee_currency or currency
        )
    outcome = Outcome.APPLIED if move is Move.ADVANCE else Outcome.LATE
    if state == payment.state and not legs:
        return Verdict(outcome, None, payment, after)
    view = _ledger_view(
        after,
        paid=money.paid,
        refunded=money.refunded if payment.kind is Kind.PAYMENT else 0,
        fee=money.fee,
        currency=currency,
    )
    return Verdict(outcome, None, payment, after, legs, callback.status, view)
