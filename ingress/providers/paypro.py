"""Paypro (paypro.tech): one JSON notify endpoint for payins and payouts (providers.md §4).

``sign`` = lowercase md5 over the body's ``key=value`` pairs sorted by key (no separator, empty
values skipped, ``sign`` itself left out) with the app secret as salt. Where the salt goes is
unsettled (the seed says after, Hutool's default is before), so the account says ``append``,
``prepend`` or ``either``. Nothing in the notify says payin or payout, nor the currency: both
come from the account.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import ProviderAccount
from contracts.errors import UnknownCurrency
from contracts.money import exponent_of, major_to_minor
from contracts.statuses import Kind, Status, VerifiedBy
from ingress.providers._common import (
    amount_field,
    any_secret_matches,
    config_error,
    details_of,
    load_json,
    opt_bool,
    opt_str,
    opt_str_list,
    require_secret,
    required_text,
    secrets_of,
)
from ingress.providers.base import (
    Accepted,
    Ack,
    Rejected,
    SimulatedPayment,
    SimulatedRequest,
)

__all__ = ["PAYPRO", "Paypro", "sign", "string_to_sign"]

# Up to 8 notifications within 24 h (providers.md).
RETRY_SCHEDULE: tuple[float, ...] = (2.0, 5.0, 10.0, 30.0, 3600.0, 10800.0, 10800.0, 10800.0)
SALT_POSITIONS = ("append", "prepend", "either")
KINDS = ("payment", "payout", "auto")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_DETAILS = ("message", "channelCode", "wayCode", "successTime")
_PAID = frozenset({"0000", "0001"})


def _as_text(value: Any) -> str:
    """A field as the Java side stringifies it (``String.valueOf``): null is ``"null"``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return str(value)  # Decimal keeps the digits exactly as they were sent
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def string_to_sign(document: Mapping[str, Any]) -> str:
    pairs = ((k, _as_text(v)) for k, v in sorted(document.items()) if k != "sign")
    return "".join(f"{k}={v}" for k, v in pairs if v != "")


def sign(document: Mapping[str, Any], secret: str, position: str = "append") -> str:
    text = string_to_sign(document)
    salted = secret + text if position == "prepend" else text + secret
    return hashlib.md5(salted.encode("utf-8")).hexdigest()


class Paypro:
    name = "paypro"
    relevant_headers: tuple[str, ...] = ("Content-Type", "merchantNo")

    def check_account(self, account: ProviderAccount) -> None:
        require_secret(account, "app_secret")
        if _salt_position(account) not in SALT_POSITIONS:
            raise config_error(account, "salt_position", f"must be one of {SALT_POSITIONS}")
        kind = opt_str(account, "kind") or "payment"
        if kind not in KINDS:
            raise config_error(account, "kind", f"must be one of {KINDS}")
        if kind == "auto" and not opt_str_list(account, "payout_prefixes"):
            raise config_error(account, "payout_prefixes", 'is required when kind = "auto"')
        currency = opt_str(account, "currency", required=True) or ""
        try:
            exponent_of(currency)
        except UnknownCurrency:
            raise config_error(account, "currency", "is not an ISO 4217 code") from None
        opt_bool(account, "test")

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        document = load_json(request.body)
        if not isinstance(document, dict):
            raise Rejected(400, "body is not a JSON object")
        received = document.get("sign")
        if not isinstance(received, str) or not received:
            raise Rejected(400, "missing sign")
        if not _MD5.match(received):
            raise Rejected(401, "bad signature")
        text = string_to_sign(document).encode("utf-8")
        position = _salt_position(account)
        expected: list[bytes] = []
        for secret in secrets_of(account, "app_secret"):
            salt = secret.reveal().encode("utf-8")
            if position in ("append", "either"):
                expected.append(hashlib.md5(text + salt).hexdigest().encode("ascii"))
            if position in ("prepend", "either"):
                expected.append(hashlib.md5(salt + text).hexdigest().encode("ascii"))
        if not any_secret_matches(expected, received.encode("ascii")):  # lowercase hex
            raise Rejected(401, "bad signature")
        return Accepted(callback=_callback(document, request, account, received_at), ack=Ack())

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        extra = payment.extra
        status = extra.get("provider_status") or _SIMULATED.get(payment.status)
        if status is None:
            raise ValueError(f"paypro cannot send status {payment.status!r}")
        currency = opt_str(account, "currency", required=True) or ""
        if payment.currency != currency:
            raise ValueError(f"this paypro account settles in {currency}")
        major_to_minor(payment.amount, currency)
        document: dict[str, Any] = {
            "platFormTradeNo": payment.transaction_id or uuid.uuid4().hex,
            "tradeNo": payment.order_id,
            "amount": payment.amount,
            "status": status,
            "message": _MESSAGES.get(status, "REJECTED_TRANSACTION"),
        }
        if status == "0000":
            document["successTime"] = extra.get("success_time", "2024-07-01 18:34:31")
        document["timestamp"] = str(int(time.time() * 1000))
        position = "prepend" if _salt_position(account) == "prepend" else "append"
        secret = secrets_of(account, "app_secret")[0].reveal()
        document["sign"] = sign(document, secret, position)
        return SimulatedRequest(
            method="POST",
            body=json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            retry_schedule=RETRY_SCHEDULE,
            expected_ack=Ack(),
        )


_SIMULATED = {"succeeded": "0000", "partially_paid": "0001", "pending": "0015", "failed": "00029"}
_MESSAGES = {"0000": "SUCCESS", "0001": "PARTIAL_PAYMENT", "0015": "PROCESSING"}


def _salt_position(account: ProviderAccount) -> str:
    return opt_str(account, "salt_position") or "either"


def _kind(account: ProviderAccount, trade_no: str) -> Kind:
    kind = opt_str(account, "kind") or "payment"
    if kind == "auto":
        payout = any(trade_no.startswith(p) for p in opt_str_list(account, "payout_prefixes"))
        return Kind.PAYOUT if payout else Kind.PAYMENT
    return Kind(kind)


def _status(provider_status: str, kind: Kind) -> Status:
    if provider_status == "0000":
        return Status.SUCCEEDED
    if provider_status == "0001":
        # Partial payment exists for payins only; on a payout it is not something we know.
        return Status.PARTIALLY_PAID if kind is Kind.PAYMENT else Status.UNRECOGNIZED
    if provider_status == "0015":
        return Status.PENDING
    return Status.FAILED  # the docs: anything else is a failure (with its own error code)


def _callback(
    document: Mapping[str, Any], request: RawRequest, account: ProviderAccount, received_at: str
) -> CallbackReceived:
    trade_no = required_text(document, "tradeNo", max_len=128)
    provider_status = required_text(document, "status", max_len=32)
    kind = _kind(account, trade_no)
    status = _status(provider_status, kind)
    currency = opt_str(account, "currency", required=True) or ""
    # `amount` is what was actually paid; for a partial payment that is not what was asked.
    # Money was paid on 0000 and 0001, so it is positive there; a payin still processing or
    # failed may report that nothing was paid (zero), never a negative amount.
    paid = amount_field(document, "amount", currency, zero_ok=provider_status not in _PAID)
    asked = None if provider_status == "0001" else paid
    details = details_of(document, _DETAILS)
    return CallbackReceived(
        provider="paypro",
        account=account.name,
        transaction_id=required_text(document, "platFormTradeNo", max_len=128),
        provider_status=provider_status,
        status=status,
        kind=kind,
        verified_by=VerifiedBy.SIGNATURE,
        received_at=received_at,
        raw=request,
        order_id=trade_no,
        amount=asked,
        currency=currency,
        paid_amount=paid,
        paid_currency=currency if paid is not None else None,
        test=opt_bool(account, "test"),
        # A second partial payment of one trade shares status 0001; its amount differs.
        variant=str(paid) if provider_status == "0001" and paid is not None else "",
        details=details,
    )


PAYPRO = Paypro()
