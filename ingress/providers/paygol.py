"""Paygol: the legacy IPN (GET, plaintext ``key``) and IPN V2 (JSON, ``X-Pg-Sig``), §2.

V2's HMAC-SHA256 is not over the raw body: Paygol's SDK decodes the JSON, sorts the top-level
keys with PHP ``ksort(SORT_NATURAL | SORT_FLAG_CASE)`` and re-encodes with ``json_encode``. We
rebuild that canonical form and also accept a match over the raw body, in constant time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus, urlencode

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import PAYSERA_RETRY_SCHEDULE, ProviderAccount
from contracts.money import major_to_minor
from contracts.statuses import Kind, Status, VerifiedBy
from ingress.providers._common import (
    amount_and_currency,
    any_secret_matches,
    details_of,
    header,
    load_json,
    opt_str,
    request_params,
    require_secret,
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

__all__ = ["PAYGOL", "Paygol", "canonical_json", "php_json"]

# Paygol documents no retry schedule; the simulator uses Paysera's.
RETRY_SCHEDULE = PAYSERA_RETRY_SCHEDULE
V2_ACK = Ack(status=200, body=b'["OK"]', content_type="application/json")
SIG_HEADER = "X-Pg-Sig"

_STATUSES: Mapping[str, Status] = {
    "completed": Status.SUCCEEDED,
    "created": Status.PENDING,
    "failed": Status.FAILED,
    "rejected": Status.FAILED,
}
_LEGACY_DETAILS = ("country", "shortcode", "keyword", "operator", "points")
_V2_DETAILS = ("method", "country")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_NATURAL = re.compile(r"([0-9]+)")  # PHP works on bytes: ASCII digits only
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Paygol:
    name = "paygol"
    relevant_headers: tuple[str, ...] = ("Content-Type", SIG_HEADER)

    def check_account(self, account: ProviderAccount) -> None:
        opt_str(account, "service_id", required=True)
        require_secret(account, "secret")

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        signature = header(request.headers, SIG_HEADER)
        if signature is not None or request.body.lstrip()[:1] == b"{":
            return _verify_v2(request, signature, account, received_at)
        return _verify_legacy(request, account, received_at)

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        if payment.kind != "payment":
            raise ValueError("paygol sends payments only")
        secret = secrets_of(account, "secret")[0].reveal()
        service = opt_str(account, "service_id", required=True) or ""
        txn = payment.transaction_id or "PG-" + uuid.uuid4().hex[:16].upper()
        extra = payment.extra
        if extra.get("version", "v2") == "legacy":
            return _simulate_legacy(payment, service, secret, txn)
        status = extra.get("provider_status") or _SIMULATED_STATUS.get(payment.status)
        if status is None:
            raise ValueError(f"paygol cannot send status {payment.status!r}")
        _check_amount(payment)
        ipn = {
            "transaction_id": txn, "status": status, "service_id": service,
            "price": payment.amount, "method": extra.get("method", "creditcard"),
            "custom": payment.order_id, "currency": payment.currency,
            "country": extra.get("country", "ES"),
        }  # fmt: skip
        signature = hmac.new(secret.encode(), canonical_json(ipn), hashlib.sha256).hexdigest()
        return SimulatedRequest(
            method="POST",
            body=php_json(ipn).encode("ascii"),
            headers={"Content-Type": "application/json", SIG_HEADER: signature},
            retry_schedule=RETRY_SCHEDULE,
            expected_ack=V2_ACK,
        )


def _check_service(fields: Mapping[str, Any], account: ProviderAccount) -> None:
    service = required_text(fields, "service_id", max_len=32)
    if service != opt_str(account, "service_id", required=True):
        raise Rejected(422, "wrong service_id", service_id=service[:20])


def _verify_legacy(request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
    fields = request_params(request.query_string, request.body)
    key = fields.get("key")
    if not key:
        raise Rejected(400, "missing key")
    expected = [s.reveal().encode("utf-8") for s in secrets_of(account, "secret")]
    if not any_secret_matches(expected, key.encode("utf-8")):
        raise Rejected(401, "wrong key")
    _check_service(fields, account)
    # Web IPNs carry transaction_id, SMS IPNs message_id.
    txn = text_field(fields, "transaction_id", required=False, max_len=64)
    txn = txn or required_text(fields, "message_id", max_len=64)
    # Sent only for a completed payment: what was paid and what was asked are both positive.
    paid, paid_currency = amount_and_currency(fields, "price", "currency")
    asked, asked_currency = amount_and_currency(fields, "frmprice", "frmcurrency")
    callback = CallbackReceived(
        provider="paygol",
        account=account.name,
        transaction_id=txn,
        provider_status="completed",  # a legacy IPN is only ever sent for a completed payment
        status=Status.SUCCEEDED,
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SHARED_SECRET,
        received_at=received_at,
        raw=_redact_key(request),
        order_id=text_field(fields, "custom", required=False),
        amount=asked if asked is not None else paid,
        currency=asked_currency if asked is not None else paid_currency,
        paid_amount=paid,
        paid_currency=paid_currency,
        details=details_of(fields, _LEGACY_DETAILS),
    )
    return Accepted(callback=callback, ack=Ack())


def _redact_key(request: RawRequest) -> RawRequest:
    """The legacy ``key`` is the service secret itself: it must not travel on in events."""

    def redact(text: str) -> str:
        parts = text.split("&")
        for i, part in enumerate(parts):
            if unquote_plus(part.partition("=")[0]) == "key":
                parts[i] = "key=REDACTED"
        return "&".join(parts)

    body = request.body
    if body.strip():
        body = redact(body.decode("utf-8")).encode("utf-8")  # request_params proved it UTF-8
    return dataclasses.replace(request, query_string=redact(request.query_string), body=body)


def _verify_v2(
    request: RawRequest, signature: str | None, account: ProviderAccount, received_at: str
) -> Accepted:
    if not signature:
        raise Rejected(400, f"missing {SIG_HEADER}")
    if not _HEX.match(signature):
        raise Rejected(401, "bad signature")
    document = load_json(request.body)
    if not isinstance(document, dict):
        raise Rejected(400, "body is not a JSON object")
    canonical = canonical_json(document)
    received = signature.encode("ascii")  # exact bytes: PHP sends lowercase hex
    expected: list[bytes] = []
    for secret in secrets_of(account, "secret"):
        key = secret.reveal().encode("utf-8")
        for message in (canonical, request.body):
            expected.append(hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii"))
    if not any_secret_matches(expected, received):
        raise Rejected(401, "bad signature")
    _check_service(document, account)
    provider_status = required_text(document, "status", max_len=32)
    # `price` is the price of the service, whatever the status: never zero or negative.
    amount, currency = amount_and_currency(document, "price", "currency")
    callback = CallbackReceived(
        provider="paygol",
        account=account.name,
        transaction_id=required_text(document, "transaction_id", max_len=64),
        provider_status=provider_status,
        status=_STATUSES.get(provider_status, Status.UNRECOGNIZED),
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SIGNATURE,
        received_at=received_at,
        raw=request,
        order_id=text_field(document, "custom", required=False),
        amount=amount,
        currency=currency,
        paid_amount=amount,
        paid_currency=currency,
        details={k: text_field(document, k, max_len=200) for k in _V2_DETAILS if document.get(k)},
    )
    return Accepted(callback=callback, ack=V2_ACK)


# --- PHP json_encode, as Paygol's SDK signs ----------------------------------------------------


def _natural_case_key(key: str) -> tuple[tuple[int, int, str], ...]:
    """PHP ``strnatcasecmp`` order: digit runs compare as numbers, text upper-cased (so ``_``
    sorts after letters: ``transactions`` < ``transaction_id``)."""
    parts: list[tuple[int, int, str]] = []
    for chunk in _NATURAL.split(key):
        if not chunk:
            continue
        if chunk[0] in "0123456789":
            parts.append((1, int(chunk), ""))
        else:
            # Characters below '0' sort before digit runs, the rest after.
            parts.append((0 if chunk[0] < "0" else 2, 0, chunk.translate(_ASCII_UPPER)))
    return tuple(parts)


def php_json(value: Any) -> str:
    """``json_encode`` with PHP's defaults: ``\\/`` escaped, ``\\uXXXX`` for non-ASCII, compact,
    and an empty object decoded as an array coming back as ``[]``."""
    if isinstance(value, dict):
        if not value:
            return "[]"
        items = (f"{php_json(str(k))}:{php_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(php_json(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True).replace("/", "\\/")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        # PHP decodes a JSON fraction to a float and prints its shortest repr; the raw-body
        # match covers the cases where PHP's and Python's shortest forms differ.
        return repr(float(value))
    raise TypeError(f"cannot encode {type(value).__name__}")


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """What ``X-Pg-Sig`` signs: top-level keys in natural case-insensitive order."""
    ordered = dict(sorted(document.items(), key=lambda kv: _natural_case_key(str(kv[0]))))
    try:
        return php_json(ordered).encode("ascii")
    except (TypeError, OverflowError):
        raise Rejected(400, "body is not encodable") from None


# --- simulation --------------------------------------------------------------------------------

_SIMULATED_STATUS = {"succeeded": "completed", "pending": "created", "failed": "failed"}


def _check_amount(payment: SimulatedPayment) -> None:
    """Fail early (``ContractError``) on an amount the currency cannot hold."""
    major_to_minor(payment.amount, payment.currency)


def _simulate_legacy(
    payment: SimulatedPayment, service: str, secret: str, txn: str
) -> SimulatedRequest:
    if payment.status != "succeeded":
        raise ValueError("a legacy Paygol IPN is only sent for completed payments")
    _check_amount(payment)
    extra = payment.extra
    if extra.get("type") == "sms":
        fields = [
            ("message_id", txn), ("service_id", service), ("shortcode", "7777"),
            ("keyword", "PAY"), ("message", "PAY " + payment.order_id),
            ("sender", "34600000000"), ("operator", "movistar"), ("country", "ES"),
            ("custom", payment.order_id), ("points", "10"), ("price", payment.amount),
            ("currency", payment.currency), ("key", secret),
        ]  # fmt: skip
    else:
        fields = [
            ("transaction_id", txn), ("service_id", service), ("country", "ES"),
            ("custom", payment.order_id), ("price", extra.get("price", payment.amount)),
            ("currency", extra.get("currency", payment.currency)),
            ("frmprice", payment.amount), ("frmcurrency", payment.currency), ("key", secret),
        ]  # fmt: skip
    return SimulatedRequest(
        method="GET", query_string=urlencode(fields), retry_schedule=RETRY_SCHEDULE
    )


PAYGOL = Paygol()
