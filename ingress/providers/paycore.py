"""PayCore.io Commerce callbacks: JSON:API payment and payout invoices (providers.md §3).

``X-Signature`` = base64(sha1(secret ‖ raw body ‖ secret)) over the exact bytes received. An
account holds a live and a test key; the key that matched must agree with
``attributes.test_mode``, so a test callback can never move live money. Amounts are major-unit
JSON numbers, parsed as ``Decimal`` and converted exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import ProviderAccount
from contracts.money import MINOR_MAX, MINOR_MIN, major_to_minor
from contracts.statuses import Kind, Status, VerifiedBy
from ingress.providers._common import (
    MAX_AMOUNT_TEXT,
    amount_field,
    any_secret_matches,
    config_error,
    decimal_text,
    header,
    load_json,
    plain_length,
    required_text,
    secrets_of,
    text_field,
)
from ingress.providers.base import (
    Accepted,
    Ack,
    Rejected,
    SimulatedPayment,
    SimulatedRequest,
)

__all__ = ["PAYCORE", "PayCore", "signature"]

SIG_HEADER = "X-Signature"
# Retry N comes N minutes after the previous attempt, up to 100 attempts (providers.md).
RETRY_SCHEDULE: tuple[float, ...] = tuple(60.0 * n for n in range(1, 100))
_SIGNATURE = re.compile(r"^[A-Za-z0-9+/]{27}=$")

_COMMON: Mapping[str, Status] = {
    "created": Status.PENDING,
    "processing": Status.PENDING,
    "process_pending": Status.PENDING,
    # Undocumented, not final: the invoice may still be processed.
    "process_error": Status.PENDING,
    "processed": Status.SUCCEEDED,
    "partially_processed": Status.PARTIALLY_PAID,
    "process_failed": Status.FAILED,
    "expired": Status.EXPIRED,
    "terminated": Status.CANCELLED,
}
PAYMENT_STATUSES: Mapping[str, Status] = {
    **_COMMON,
    "refunding": Status.REFUND_PENDING,
    "refund_pending": Status.REFUND_PENDING,
    "refund_error": Status.REFUND_PENDING,  # undocumented, not final
    "refunded": Status.REFUNDED,
    "partially_refunded": Status.PARTIALLY_REFUNDED,
    "refund_failed": Status.REFUND_FAILED,
}
PAYOUT_STATUSES: Mapping[str, Status] = {
    **_COMMON,
    "canceled": Status.CANCELLED,
    "partially_canceled": Status.PARTIALLY_PAID,  # part paid out, the rest cancelled
    # A processed payout being (or failing to be) cancelled: worth seeing, no state change.
    "canceling": Status.INFO,
    "cancel_pending": Status.INFO,
    "cancel_error": Status.INFO,
    "cancel_failed": Status.INFO,
}
_TYPES: Mapping[str, tuple[Kind, Mapping[str, Status]]] = {
    "payment-invoices": (Kind.PAYMENT, PAYMENT_STATUSES),
    "payout-invoices": (Kind.PAYOUT, PAYOUT_STATUSES),
}
_DETAILS = ("resolution", "flow", "service_currency", "moderation_required", "updated")


def signature(secret: str, body: bytes) -> str:
    key = secret.encode("utf-8")
    return base64.b64encode(hashlib.sha1(key + body + key).digest()).decode("ascii")


class PayCore:
    name = "paycore"
    relevant_headers: tuple[str, ...] = ("Content-Type", SIG_HEADER)

    def check_account(self, account: ProviderAccount) -> None:
        for key in ("live_key", "test_key"):
            if key in account.options:
                raise config_error(account, key, 'must be a secret reference ("env:" or "file:")')
        live = {s.reveal() for s in secrets_of(account, "live_key")}
        test = {s.reveal() for s in secrets_of(account, "test_key")}
        if not live and not test:
            raise config_error(account, "live_key", "or test_key is required")
        if live & test:
            raise config_error(account, "test_key", "must differ from live_key")

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        received = header(request.headers, SIG_HEADER)
        if not received:
            raise Rejected(400, f"missing {SIG_HEADER}")
        received = received.strip()
        if not _SIGNATURE.match(received):
            raise Rejected(401, "bad signature")
        body = request.body
        live = [signature(s.reveal(), body).encode() for s in secrets_of(account, "live_key")]
        test = [signature(s.reveal(), body).encode() for s in secrets_of(account, "test_key")]
        live_match = any_secret_matches(live, received.encode("ascii"))
        test_match = any_secret_matches(test, received.encode("ascii"))
        if not (live_match or test_match):
            raise Rejected(401, "bad signature")
        data = _object(load_json(body), "data")
        attributes = _object(data, "attributes")
        test_mode = attributes.get("test_mode")
        if test_mode is not None and not isinstance(test_mode, bool):
            raise Rejected(400, "test_mode is not a boolean")
        if test_mode is not None and test_mode != test_match:
            raise Rejected(422, "test_mode disagrees with the key that signed")
        return Accepted(
            callback=_callback(data, attributes, test_match, request, account, received_at),
            ack=Ack(),
        )

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        keys = secrets_of(account, "test_key" if payment.test else "live_key")
        if not keys:
            raise ValueError(f"account has no {'test_key' if payment.test else 'live_key'}")
        payout = payment.kind == "payout"
        statuses = PAYOUT_STATUSES if payout else PAYMENT_STATUSES
        status = payment.extra.get("provider_status") or _SIMULATED.get(payment.status)
        if status == "terminated" and payout:
            status = "canceled"
        if status is None or (status not in statuses and "provider_status" not in payment.extra):
            raise ValueError(f"paycore cannot send {payment.kind} status {payment.status!r}")
        major_to_minor(payment.amount, payment.currency)  # refuse what PayCore could not send
        prefix = "cpoi_" if payout else "cpi_"
        # Placeholders become bare JSON numbers after encoding; the nonce keeps an order id
        # that happens to look like one from being replaced.
        nonce = uuid.uuid4().hex
        attributes: dict[str, Any] = {
            "status": status,
            "resolution": "ok",
            "amount": f"\0amount{nonce}",
            "currency": payment.currency,
            "reference_id": payment.order_id,
            "test_mode": payment.test,
        }
        numbers = {"amount": payment.amount}
        for key in ("processed_amount", "refunded_amount", "fee"):
            if key in payment.extra:
                major_to_minor(payment.extra[key], payment.currency)
                attributes[key] = f"\0{key}{nonce}"
                numbers[key] = payment.extra[key]
        document = {
            "data": {
                "type": "payout-invoices" if payout else "payment-invoices",
                "id": payment.transaction_id or prefix + uuid.uuid4().hex[:16].upper(),
                "attributes": attributes,
            }
        }
        text = json.dumps(document, separators=(",", ":")).replace("/", "\\/")
        for key, number in numbers.items():  # major units as JSON numbers, digits preserved
            text = text.replace(f'"\\u0000{key}{nonce}"', str(Decimal(number)))
        body = text.encode("utf-8")
        return SimulatedRequest(
            method="POST",
            body=body,
            headers={
                "Content-Type": "application/json",
                SIG_HEADER: signature(keys[0].reveal(), body),
            },
            retry_schedule=RETRY_SCHEDULE,
        )


_SIMULATED = {
    "pending": "processing",
    "succeeded": "processed",
    "partially_paid": "partially_processed",
    "failed": "process_failed",
    "expired": "expired",
    "cancelled": "terminated",
    "refund_pending": "refunding",
    "refunded": "refunded",
    "partially_refunded": "partially_refunded",
    "refund_failed": "refund_failed",
}


def _object(parent: Any, key: str) -> dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, dict):
        raise Rejected(400, f"{key} is not a JSON object")
    return value


def _detail_number(value: Any) -> bool:
    """A number worth keeping as a detail: one the broker's codec can write, in plain text
    of sensible length (``1e400`` and 30-digit integers stay in ``raw`` only)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return MINOR_MIN <= value <= MINOR_MAX
    return isinstance(value, Decimal) and plain_length(value) <= MAX_AMOUNT_TEXT


def _callback(
    data: Mapping[str, Any],
    attributes: Mapping[str, Any],
    test: bool,
    request: RawRequest,
    account: ProviderAccount,
    received_at: str,
) -> CallbackReceived:
    invoice_type = required_text(data, "type", max_len=64)
    kind, statuses = _TYPES.get(invoice_type, (Kind.PAYMENT, {}))
    provider_status = required_text(attributes, "status", max_len=64)
    status = statuses.get(provider_status, Status.UNRECOGNIZED)
    currency = text_field(attributes, "currency", required=False, max_len=8)
    # An invoice is for a positive amount. The others are running results that are zero until
    # something happened (nothing processed or refunded yet, no fee charged); the ledger
    # refuses a paid or refunded fact whose amount is not positive. Refunds are reported as
    # positive `refunded_amount`, so no amount here is ever negative.
    amount = amount_field(attributes, "amount", currency)
    processed = amount_field(attributes, "processed_amount", currency, zero_ok=True)
    refunded = amount_field(attributes, "refunded_amount", currency, zero_ok=True)
    fee = amount_field(attributes, "fee", currency, zero_ok=True)
    # Resends of one callback carry the same body; partial steps that share a status differ in
    # their amount, which keeps a second partial refund from being taken for a resend.
    variant = ""
    if provider_status == "partially_refunded" and refunded is not None:
        variant = str(refunded)
    elif provider_status in ("partially_processed", "partially_canceled") and processed is not None:
        variant = str(processed)
    details: dict[str, Any] = {
        k: v
        for k in _DETAILS
        if isinstance(v := attributes.get(k), str | bool)
        or (isinstance(v, int) and _detail_number(v))
    }
    if _detail_number(attributes.get("payment_amount")):
        details["payment_amount"] = decimal_text(attributes["payment_amount"])
    flow_data = attributes.get("flow_data")
    if isinstance(flow_data, dict) and isinstance(flow_data.get("method"), str):
        details["method"] = flow_data["method"][:100]
    if invoice_type not in _TYPES:
        details["type"] = invoice_type
    return CallbackReceived(
        provider="paycore",
        account=account.name,
        transaction_id=required_text(data, "id", max_len=128),
        provider_status=provider_status,
        status=status,
        kind=kind,
        verified_by=VerifiedBy.SIGNATURE,
        received_at=received_at,
        raw=request,
        order_id=text_field(attributes, "reference_id", required=False),
        amount=amount,
        currency=currency,
        paid_amount=processed,
        paid_currency=currency if processed is not None else None,
        refund_amount=refunded,
        fee_amount=fee,
        fee_currency=currency if fee is not None else None,
        test=test,
        variant=variant,
        details=details,
    )


PAYCORE = PayCore()
