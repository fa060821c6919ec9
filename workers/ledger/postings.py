"""What money a callback moves, and the double-entry legs that record it (pure: no I/O).

The money of a payment is kept as *targets* derived from the facts accepted so far, never as
a running sum of whatever arrived, so that any order of the same facts ends at the same
numbers (see ``states.py`` for why order cannot be relied on):

- ``paid``: the most any paid fact reported. ``succeeded`` reports the settled amount
  (``paid_amount`` when it is in the payment's currency, else ``amount``: a conversion is
  settled at the order amount); ``partially_paid`` reports ``paid_amount``. So a partial
  payment posts what was paid and a later ``succeeded`` posts only the remainder.
- ``refund_sum``: the sum of ``partially_refunded`` facts' ``refund_amount`` (each partial
  refund is its own callback, told apart by ``variant``; ``refund_amount`` is that refund's own
  amount, not a running total). ``refunded`` means *all of it*: ``full_refund``.
- ``refunded`` (derived) = ``paid`` after a full refund, else ``min(refund_sum, paid)``: the
  cumulative refund never exceeds what was paid.
- ``fee``: the largest ``fee_amount`` a paid-branch fact reported (PayCore repeats the
  invoice's fee on every callback of it, so fees are not summed).

All targets only grow, so each accepted fact posts the difference between the new and the old
targets, never a negative amount. Sign convention of a leg: debit > 0, credit < 0; every
entry sums to zero per currency (the database enforces it, migration 011).

Accounts (``test:`` in front for test-mode payments, so sandbox money never mixes with live):
- ``provider_clearing:<provider>:<account>``: what the provider owes us (asset, debit-normal).
- ``merchant_balance:<merchant>``: what we owe the merchant (liability, credit-normal);
  ``unallocated:<provider>:<account>`` when the account names no merchant.
- ``provider_fees:<provider>``: fees the provider kept (credit-normal).

Postings per delta (payment): paid +d: Dr clearing, Cr merchant; refunded +r: Dr merchant,
Cr clearing; fee +f: Dr merchant, Cr fees. Payout: paid +d: Dr merchant, Cr clearing; fee as
for payments.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.callbacks import CallbackReceived
from contracts.statuses import Kind, Status

__all__ = [
    "Accounts",
    "Leg",
    "Money",
    "accounts_for",
    "fee_of",
    "legs_for",
    "money_after",
    "paid_of",
]


@dataclass(frozen=True, slots=True)
class Money:
    """A payment's money targets (minor units of the payment's currency)."""

    paid: int = 0
    refund_sum: int = 0
    full_refund: bool = False
    fee: int = 0

    @property
    def refunded(self) -> int:
        return self.paid if self.full_refund else min(self.refund_sum, self.paid)


@dataclass(frozen=True, slots=True)
class Leg:
    account: str
    currency: str
    amount: int  # debit > 0, credit < 0; never 0


@dataclass(frozen=True, slots=True)
class Accounts:
    clearing: str
    merchant: str
    fees: str


def accounts_for(provider: str, account: str, merchant: str | None, test: bool) -> Accounts:
    prefix = "test:" if test else ""
    holder = f"merchant_balance:{merchant}" if merchant else f"unallocated:{provider}:{account}"
    return Accounts(
        clearing=f"{prefix}provider_clearing:{provider}:{account}",
        merchant=f"{prefix}{holder}",
        fees=f"{prefix}provider_fees:{provider}",
    )


def paid_of(callback: CallbackReceived, currency: str) -> int | None:
    """The amount a ``succeeded``/``partially_paid`` fact says was paid, in ``currency``."""
    same = callback.paid_currency is None or callback.paid_currency == currency
    if callback.status is Status.PARTIALLY_PAID:
        return callback.paid_amount if same else None
    if callback.paid_amount is not None and same:
        return callback.paid_amount
    return callback.amount


def fee_of(callback: CallbackReceived, currency: str) -> tuple[int, str] | None:
    if callback.fee_amount is None or callback.fee_amount <= 0:
        return None
    return callback.fee_amount, callback.fee_currency or currency


def money_after(
    kind: Kind,
    money: Money,
    callback: CallbackReceived,
    currency: str,
    fee_currency: str | None = None,
) -> Money | str:
    """The targets once ``callback`` (an accepted fact) counts; or why it cannot.

    Only called for facts the state machine accepted (advance or late). A fact that should
    move money but lacks the amount to do it is refused (a string reason) rather than guessed.
    ``fee_currency`` is the currency the payment's fees were first reported in: a fee in
    another currency is ignored (fees are a maximum, which only means something in one currency).
    """
    status = callback.status
    paid, refund_sum, full, fee = money.paid, money.refund_sum, money.full_refund, money.fee
    if status in (Status.SUCCEEDED, Status.PARTIALLY_PAID):
        amount = paid_of(callback, currency)
        if amount is None or amount <= 0:
            return f"{status.value} without a positive paid amount in {currency}"
        paid = max(paid, amount)
    elif kind is Kind.PAYMENT and status is Status.PARTIALLY_REFUNDED:
        if callback.refund_amount is None or callback.refund_amount <= 0:
            return "partially_refunded without a positive refund_amount"
        refund_sum += callback.refund_amount
    elif kind is Kind.PAYMENT and status is Status.REFUNDED:
        full = True
    found = fee_of(callback, currency)
    if found is not None and status.value in _FEE_STATUSES:
        if fee_currency is None or found[1] == fee_currency:
            fee = max(fee, found[0])
    return Money(paid=paid, refund_sum=refund_sum, full_refund=full, fee=fee)


# Fees are reported with money that moved; a pending invoice's announced fee is not charged yet.
_FEE_STATUSES = frozenset(
    {
        "succeeded",
        "partially_paid",
        "refund_pending",
        "refund_failed",
        "partially_refunded",
        "refunded",
    }
)


def legs_for(
    kind: Kind,
    before: Money,
    after: Money,
    accounts: Accounts,
    currency: str,
    fee_currency: str,
) -> tuple[Leg, ...]:
    """The postings that take the ledger from ``before`` to ``after`` (both targets)."""
    legs: list[Leg] = []
    d_paid = after.paid - before.paid
    d_refund = after.refunded - before.refunded
    d_fee = after.fee - before.fee
    if min(d_paid, d_refund, d_fee) < 0:
        raise ValueError("money targets only grow")  # a bug, never data: fail the batch
    if kind is Kind.PAYMENT:
        if d_paid:
            legs += [
                Leg(accounts.clearing, currency, d_paid),
                Leg(accounts.merchant, currency, -d_paid),
            ]
        if d_refund:
            legs += [
                Leg(accounts.merchant, currency, d_refund),
                Leg(accounts.clearing, currency, -d_refund),
            ]
    elif d_paid:
        legs += [
            Leg(accounts.merchant, currency, d_paid),
            Leg(accounts.clearing, currency, -d_paid),
        ]
    if d_fee:
        legs += [
            Leg(accounts.merchant, fee_currency, d_fee),
            Leg(accounts.fees, fee_currency, -d_fee),
        ]
    return tuple(legs)
