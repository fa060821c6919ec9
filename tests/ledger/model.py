"""The reference model: the ledger's documented rules (docs/ledger.md), written again plainly.

Deliberately independent of ``workers.ledger``: a dict of payments and a dict of balances,
updated one callback at a time. Tests feed the same callbacks to the model and to the real
worker and compare the results.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from contracts.callbacks import CallbackReceived

ORDER = {
    "new": 0,
    "pending": 1,
    "failed": 2,
    "expired": 2,
    "cancelled": 2,
    "partially_paid": 3,
    "succeeded": 4,
    "refund_pending": 5,
    "refund_failed": 6,
    "partially_refunded": 7,
    "refunded": 8,
}
DEAD_ENDS = {"failed", "expired", "cancelled"}
MONEY_STATES = {
    "partially_paid",
    "succeeded",
    "refund_pending",
    "refund_failed",
    "partially_refunded",
    "refunded",
}
REFUND_STATES = {"refund_pending", "refund_failed", "partially_refunded", "refunded"}


@dataclass
class ModelPayment:
    kind: str
    state: str
    currency: str | None
    test: bool
    order_id: str | None
    merchant: str | None
    provider: str
    account: str
    paid: int = 0
    refund_sum: int = 0
    full_refund: bool = False
    fee: int = 0
    fee_currency: str | None = None

    @property
    def refunded(self) -> int:
        if self.kind == "payout":
            return 0
        return self.paid if self.full_refund else min(self.refund_sum, self.paid)


class Model:
    def __init__(
        self,
        merchants: dict[tuple[str, str], str | None],
        trust_source_address: bool = False,
        require: dict[tuple[str, str], bool] | None = None,
    ) -> None:
        self.merchants = merchants
        self.trust_source_address = trust_source_address
        self.require = require or {}
        self.payments: dict[tuple[str, str, str], ModelPayment] = {}
        self.expectations: dict[tuple[str, str, str], tuple[int, str, bool]] = {}
        # Callbacks held back by their order's expectation (or its absence), per order.
        self.held: dict[tuple[str, str, str], list[CallbackReceived]] = defaultdict(list)
        self.seen: set[str] = set()

    def expect(
        self, provider: str, account: str, order_id: str, amount: int, currency: str, test: bool
    ) -> None:
        """A registration: the order's held callbacks are decided again under the new terms,
        each once per set of terms."""
        key = (provider, account, order_id)
        self.expectations[key] = (amount, currency, test)
        for cb in list(self.held[key]):
            self.apply(replace(cb, variant=f"{cb.variant}~{amount}|{currency}|{test}"), cb)

    def _needs_expectation(self, cb: CallbackReceived) -> bool:
        key = (cb.provider, cb.account)
        if key in self.require:
            return self.require[key]
        return cb.verified_by.value == "source_address" and not self.trust_source_address

    def apply(self, cb: CallbackReceived, original: CallbackReceived | None = None) -> None:
        if cb.id in self.seen:
            return
        self.seen.add(cb.id)
        key = (cb.provider, cb.account, cb.transaction_id)
        if key not in self.payments:
            self.payments[key] = ModelPayment(
                kind=cb.kind.value,
                state="new",
                currency=cb.currency,
                test=cb.test,
                order_id=cb.order_id,
                merchant=self.merchants.get((cb.provider, cb.account)),
                provider=cb.provider,
                account=cb.account,
            )
        p = self.payments[key]
        status = cb.status.value
        if status in ("info", "unrecognized", "amount_mismatch") or cb.kind.value != p.kind:
            return
        if p.kind == "payout" and status in REFUND_STATES:
            return
        forward = ORDER[status] > ORDER[p.state] and p.state not in DEAD_ENDS
        if status in MONEY_STATES and p.state in DEAD_ENDS:
            forward = False
        behind = status in MONEY_STATES and p.state in MONEY_STATES and not forward
        if not forward and not behind:
            return

        currency = p.currency or cb.currency
        settled = None
        if currency is not None:
            same = cb.paid_currency in (None, currency)
            if status == "partially_paid":
                settled = cb.paid_amount if same else None
            elif cb.paid_amount is not None and same:
                settled = cb.paid_amount
            else:
                settled = cb.amount
        order = cb.order_id or p.order_id
        expected = self.expectations.get((cb.provider, cb.account, order)) if order else None
        if expected is not None:
            amount, exp_currency, exp_test = expected
            if (
                (cb.currency is not None and cb.currency != exp_currency)
                or (cb.amount is not None and cb.amount != amount)
                or cb.test != exp_test
                or (status == "succeeded" and settled is not None and settled != amount)
            ):
                self._hold(order, original or cb)
                return
        elif self._needs_expectation(cb) and status in MONEY_STATES:
            if order:
                self._hold(order, original or cb)
            return
        if cb.currency is not None and cb.currency != currency:
            return
        if cb.test != p.test:
            return

        paid, refund_sum, full, fee = p.paid, p.refund_sum, p.full_refund, p.fee
        fee_currency = p.fee_currency
        if status in MONEY_STATES:
            if currency is None:
                return
            if status in ("succeeded", "partially_paid"):
                if settled is None or settled <= 0:
                    return
                paid = max(paid, settled)
            elif status == "partially_refunded" and p.kind == "payment":
                if not cb.refund_amount or cb.refund_amount <= 0:
                    return
                refund_sum += cb.refund_amount
            elif status == "refunded":
                full = True
            if cb.fee_amount and cb.fee_amount > 0:
                this_fee_currency = cb.fee_currency or currency
                if fee_currency is None or fee_currency == this_fee_currency:
                    if cb.fee_amount > fee and fee_currency is None:
                        fee_currency = this_fee_currency
                    fee = max(fee, cb.fee_amount)
        p.paid, p.refund_sum, p.full_refund, p.fee = paid, refund_sum, full, fee
        p.fee_currency = fee_currency
        p.currency = currency
        p.order_id = p.order_id or cb.order_id
        if forward:
            p.state = status

    def _hold(self, order: str, cb: CallbackReceived) -> None:
        held = self.held[(cb.provider, cb.account, order)]
        if cb not in held:
            held.append(cb)

    # ------------------------------------------------------------------ what to compare

    def states(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {
            key: {
                "state": p.state,
                "paid": p.paid,
                "refunded": p.refunded,
                "fee": p.fee,
            }
            for key, p in self.payments.items()
        }

    def balances(self) -> dict[tuple[str, str], int]:
        """Net per (account, currency), debit > 0, zero balances left out."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for p in self.payments.values():
            if p.currency is None:
                continue
            pre = "test:" if p.test else ""
            clearing = f"{pre}provider_clearing:{p.provider}:{p.account}"
            merchant = (
                f"{pre}merchant_balance:{p.merchant}"
                if p.merchant
                else f"{pre}unallocated:{p.provider}:{p.account}"
            )
            fees = f"{pre}provider_fees:{p.provider}"
            if p.kind == "payment":
                out[(clearing, p.currency)] += p.paid - p.refunded
                out[(merchant, p.currency)] -= p.paid - p.refunded
            else:
                out[(clearing, p.currency)] -= p.paid
                out[(merchant, p.currency)] += p.paid
            if p.fee:
                out[(merchant, p.fee_currency or p.currency)] += p.fee
                out[(fees, p.fee_currency or p.currency)] -= p.fee
        return {k: v for k, v in out.items() if v != 0}
