"""Order expectations: what a merchant's checkout says it expects to be paid.

Registered before the payer pays, by ``POST /orders`` on the admin listener or by a message on
the ``<ns>.orders`` queue (same JSON document either way)::

    {"merchant": "shop", "provider": "paysera", "account": "main", "order_id": "ORD-1001",
     "amount": 1250, "currency": "EUR", "test": false}

``amount`` is in minor units (an integer); ``amount_major`` (a decimal string, ``"12.50"``)
may be sent instead. When a callback names an order with an expectation, its amount,
currency and test flag must agree, or the ledger records ``amount_mismatch`` and moves no
money. Re-registering the same values is harmless; changing them is allowed until money has
moved for that order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from contracts.callbacks import CallbackReceived
from contracts.config import Config
from contracts.errors import ContractError
from contracts.money import exponent_of, major_to_minor
from contracts.statuses import Status
from workers.ledger.conn import Conn

__all__ = [
    "Expectation",
    "InvalidExpectation",
    "OrderKey",
    "Registration",
    "lock_orders",
    "mismatch",
    "parse_expectation",
    "register_expectation",
]

log = structlog.get_logger(__name__)

Registration = Literal["created", "unchanged", "updated", "conflict"]
OrderKey = tuple[str, str, str]  # (provider, account, order_id)

# Advisory-lock namespace ("ORDR") for orders, beside the payments' ("LEDG", store.py).
ORDER_LOCK_CLASS = 0x4F524452
_LOCK_ORDERS = "SELECT count(pg_advisory_xact_lock($1, k)) FROM unnest($2::int4[]) AS k"

_MAX_ORDER_ID = 200


class InvalidExpectation(ValueError):
    """An expectation document that cannot be registered; the message says which field."""


@dataclass(frozen=True, slots=True)
class Expectation:
    merchant: str
    provider: str
    account: str
    order_id: str
    amount: int  # minor units
    currency: str
    test: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "merchant": self.merchant,
            "provider": self.provider,
            "account": self.account,
            "order_id": self.order_id,
            "amount": self.amount,
            "currency": self.currency,
            "test": self.test,
        }


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_ORDER_ID:
        raise InvalidExpectation(f"{key} must be a non-empty string of at most {_MAX_ORDER_ID}")
    return value


def parse_expectation(data: Any, config: Config) -> Expectation:
    """Validate a registration document against the configuration."""
    if not isinstance(data, dict):
        raise InvalidExpectation("expected a JSON object")
    merchant = _text(data, "merchant")
    provider = _text(data, "provider")
    account = _text(data, "account")
    order_id = _text(data, "order_id")
    currency = _text(data, "currency")
    try:
        exponent_of(currency)
        if "amount" in data:
            amount = data["amount"]
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise InvalidExpectation("amount must be an integer of minor units")
        elif isinstance(data.get("amount_major"), str):
            amount = major_to_minor(data["amount_major"], currency)
        else:
            raise InvalidExpectation("amount (minor units) or amount_major (string) is required")
    except ContractError as exc:
        raise InvalidExpectation(str(exc)) from None
    if amount <= 0:
        raise InvalidExpectation("amount must be positive")
    test = data.get("test", False)
    if not isinstance(test, bool):
        raise InvalidExpectation("test must be true or false")
    acc = config.account(provider, account)
    if acc is None:
        raise InvalidExpectation(f"unknown provider account {provider}/{account}")
    if merchant not in config.merchants or acc.merchant != merchant:
        raise InvalidExpectation(f"account {provider}/{account} does not belong to {merchant}")
    return Expectation(merchant, provider, account, order_id, amount, currency, test)


def mismatch(expectation: Expectation, callback: CallbackReceived, paid: int | None) -> str | None:
    """Why ``callback`` disagrees with ``expectation`` (comma-separated fields), or None.

    ``paid`` is what a ``succeeded`` callback says was settled: a success for less than the
    order is a mismatch too (a partial payment must say ``partially_paid``).
    """
    reasons: list[str] = []
    if callback.currency is not None and callback.currency != expectation.currency:
        reasons.append("currency")
    if callback.amount is not None and callback.amount != expectation.amount:
        reasons.append("amount")
    if (
        callback.status is Status.SUCCEEDED
        and paid is not None
        and "amount" not in reasons
        and "currency" not in reasons
        and paid != expectation.amount
    ):
        reasons.append("paid_amount")
    if callback.test != expectation.test:
        reasons.append("test")
    return ",".join(reasons) or None


_SELECT = """
SELECT merchant, amount, currency, test FROM order_expectations
WHERE provider = $1 AND account = $2 AND order_id = $3 FOR UPDATE
"""
_INSERT = """
INSERT INTO order_expectations (provider, account, order_id, merchant, amount, currency, test)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING
"""
_MONEY_MOVED = """
SELECT EXISTS (SELECT 1 FROM payments WHERE provider = $1 AND account = $2 AND order_id = $3
               AND (paid > 0 OR refund_sum > 0 OR full_refund))
"""
_UPDATE = """
UPDATE order_expectations SET merchant = $4, amount = $5, currency = $6, test = $7,
       updated_at = now()
WHERE provider = $1 AND account = $2 AND order_id = $3
"""


def order_lock_key(key: OrderKey) -> int:
    """The advisory-lock key of an order: 32 bits of a hash, as a signed int4 (a collision
    merely makes two orders take turns)."""
    digest = hashlib.sha256("\x1f".join(key).encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


async def lock_orders(conn: Conn, keys: Iterable[OrderKey]) -> None:
    """Take the orders' locks until the end of the transaction, all at once, in key order.

    What they order: a registration (which then releases what its order holds) and a ledger
    transaction about to commit a hold under that order. Under read committed neither sees
    the other's uncommitted row, so without the lock a callback held by a transaction that
    read "no expectation" just before a registration committed, and committed itself just
    after the registration looked for held callbacks, stayed held for good (seen in
    tests/chaos). With it, whichever comes second sees what the first committed.
    """
    await conn.fetchval(_LOCK_ORDERS, ORDER_LOCK_CLASS, sorted({order_lock_key(k) for k in keys}))


async def register_expectation(conn: Conn, exp: Expectation) -> Registration:
    """Insert or update ``exp``; ``conflict`` when money already moved under other terms."""
    args = (exp.provider, exp.account, exp.order_id, exp.merchant, exp.amount, exp.currency)
    for _ in range(3):  # a concurrent first registration of the same order: look again
        async with conn.transaction():
            # Waits for a ledger transaction holding a callback of this order (lock_orders).
            await lock_orders(conn, [(exp.provider, exp.account, exp.order_id)])
            row = await conn.fetchrow(_SELECT, *args[:3])
            if row is None:
                status = await conn.execute(_INSERT, *args, exp.test)
                if status.endswith(" 1"):
                    return "created"
                continue
            if (row["merchant"], row["amount"], row["currency"], row["test"]) == (
                *args[3:],
                exp.test,
            ):
                return "unchanged"
            if await conn.fetchval(_MONEY_MOVED, *args[:3]):
                return "conflict"
            await conn.execute(_UPDATE, *args, exp.test)
            return "updated"
    raise RuntimeError("expectation registration kept racing")  # pragma: no cover
