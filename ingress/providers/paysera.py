"""Paysera (WebToPay): "macro" payment callbacks and SMS "micro" callbacks (providers.md §1).

Verification follows lib-webtopay's ``CallbackValidator``: when any ``ss*`` parameter is sent
the ``data`` string is signed (ss3 RSA-SHA256 preferred, else ss2 RSA-SHA1, ss1 md5 only where
the account allows it); otherwise ``data`` is AES-256-GCM encrypted with the project password.
Then the decoded ``projectid`` must be the account's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import PAYSERA_RETRY_SCHEDULE, ProviderAccount
from contracts.money import major_to_minor
from contracts.statuses import Kind, Status, VerifiedBy
from ingress.providers import _paysera_crypto as crypto
from ingress.providers._common import (
    amount_and_currency,
    any_secret_matches,
    config_error,
    details_of,
    opt_bool,
    opt_str,
    opt_str_list,
    parse_form,
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

__all__ = ["PAYSERA", "Paysera"]

RETRY_SCHEDULE = PAYSERA_RETRY_SCHEDULE
DEFAULT_SMS_REPLY = "Thank you for your payment."
_MAX_DATA = 16 * 1024

_STATUSES: Mapping[str, Status] = {
    "0": Status.FAILED,  # payment not executed
    "1": Status.SUCCEEDED,
    "2": Status.PENDING,  # order accepted, funds not yet received
    "3": Status.INFO,  # additional information (a refund when refund_* fields are present)
    # "Executed, but no bank confirmation will follow": Paysera says only 1 means paid, so it
    # is not credited; the detail lets people decide (providers.md open question).
    "4": Status.PENDING,
}
# Non-personal fields worth passing on; names, e-mails, payer countries and IPs stay in `raw`.
_MACRO_DETAILS = ("payment", "country", "lang", "version", "type", "personcodestatus")
_MICRO_DETAILS = ("to", "operator", "country", "version", "type")


class Paysera:
    name = "paysera"
    relevant_headers: tuple[str, ...] = ("Content-Type",)

    def check_account(self, account: ProviderAccount) -> None:
        opt_str(account, "project_id", required=True)
        require_secret(account, "password")
        opt_bool(account, "allow_ss1")
        opt_str(account, "sms_reply")
        try:
            _public_keys(account)
        except (OSError, ValueError) as exc:
            raise config_error(account, "public_key_file", f"cannot be used: {exc}") from None

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        params = request_params(request.query_string, request.body)
        data = params.get("data")
        if not data:
            raise Rejected(400, "missing data")
        if len(data) > _MAX_DATA:
            raise Rejected(400, "data too long")
        decoded = _open(params, data, account)
        fields = parse_form(decoded, "data")
        project = required_text(fields, "projectid", max_len=32)
        if project != opt_str(account, "project_id", required=True):
            raise Rejected(422, "wrong projectid", projectid=project[:20])
        kind = fields.get("type")
        if kind not in ("micro", "macro"):
            micro = all(k in fields for k in ("to", "from", "sms"))
            kind = "micro" if micro else "macro"
        build = _micro if kind == "micro" else _macro
        callback, ack = build(fields, request, account, received_at)
        return Accepted(callback=callback, ack=ack)

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        extra = payment.extra
        password = secrets_of(account, "password")[0].reveal()
        query = urlencode(_simulated_fields(account, payment))
        mode = extra.get("mode", "encrypted")
        params: dict[str, str]
        if mode == "encrypted":
            params = {"data": crypto.encrypt_gcm(query.encode("utf-8"), password)}
        elif mode in ("ss1", "ss2", "ss3"):
            data = crypto.b64url_encode(query.encode("utf-8"))
            params = {"data": data, "ss1": crypto.ss1(data, password)}
            if mode != "ss1":
                if "private_key_file" not in extra:
                    raise ValueError("mode ss2/ss3 needs --set private_key_file=<PEM>")
                key = crypto.load_private_key(extra["private_key_file"])
                params["ss2"] = crypto.rsa_sign(key, data, sha256=False)
                if mode == "ss3":
                    params["ss3"] = crypto.rsa_sign(key, data, sha256=True)
        else:
            raise ValueError("mode must be encrypted, ss1, ss2 or ss3")
        encoded = urlencode(params)
        ack = Ack()
        if extra.get("type") == "micro":
            ack = Ack(body=b"OK " + (opt_str(account, "sms_reply") or DEFAULT_SMS_REPLY).encode())
        if extra.get("method", "GET").upper() == "POST":
            return SimulatedRequest(
                method="POST",
                body=encoded.encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                retry_schedule=RETRY_SCHEDULE,
                expected_ack=ack,
            )
        return SimulatedRequest(
            method="GET", query_string=encoded, retry_schedule=RETRY_SCHEDULE, expected_ack=ack
        )


def _public_keys(account: ProviderAccount) -> tuple[rsa.RSAPublicKey, ...]:
    """The account's override keys (PEM key or certificate files), else the pinned key."""
    keys: list[rsa.RSAPublicKey] = []
    for pem in secrets_of(account, "public_key_file"):  # given as "file:PATH" (or env:)
        keys.extend(crypto.public_keys_from_pem(pem.reveal().encode("utf-8")))
    for path in opt_str_list(account, "public_key_file"):  # given as a plain path
        keys.extend(crypto.public_keys_from_path(os.path.abspath(path)))
    return tuple(keys) or crypto.default_public_keys()


def _open(params: Mapping[str, str], data: str, account: ProviderAccount) -> bytes:
    """Authenticate ``data`` and return the decoded query string it carries."""
    passwords = [s.reveal() for s in secrets_of(account, "password")]
    if not any(k in params for k in ("ss1", "ss2", "ss3")):
        if crypto.b64url_decode(data) is None:
            raise Rejected(400, "undecodable data")
        for password in passwords:
            plaintext = crypto.decrypt_gcm(data, password)
            if plaintext is not None:
                return plaintext
        raise Rejected(401, "bad encrypted data")
    # Like the lib: the strongest signature present decides; a weaker one is not a fallback.
    if "ss3" in params or "ss2" in params:
        sha256 = "ss3" in params
        signature = params["ss3" if sha256 else "ss2"]
        if not crypto.rsa_verify(_public_keys(account), signature, data, sha256):
            raise Rejected(401, "bad signature")
    else:
        if not opt_bool(account, "allow_ss1"):
            raise Rejected(401, "ss1 signatures are not accepted for this account")
        received = params["ss1"].encode("utf-8")
        expected = [crypto.ss1(data, p).encode("utf-8") for p in passwords]
        if not any_secret_matches(expected, received):
            raise Rejected(401, "bad signature")
    decoded = crypto.b64url_decode(data)
    if decoded is None:
        raise Rejected(400, "undecodable data")
    return decoded


def _money(
    fields: Mapping[str, str], amount_key: str, currency_key: str, *, zero_ok: bool = False
) -> tuple[int | None, str | None]:
    """Minor units (Paysera never sends major ones). No Paysera amount is signed: a refund
    is its own positive ``refund_amount``."""
    return amount_and_currency(fields, amount_key, currency_key, minor=True, zero_ok=zero_ok)


def _macro(
    fields: Mapping[str, str], request: RawRequest, account: ProviderAccount, received_at: str
) -> tuple[CallbackReceived, Ack]:
    order_id = required_text(fields, "orderid", max_len=64)
    provider_status = required_text(fields, "status", max_len=16)
    # Old protocol versions may lack requestid; the order id is then the only stable key.
    transaction_id = text_field(fields, "requestid", required=False, max_len=64) or order_id
    # `amount` is what the order asks: positive. `payamount` is what was actually paid, so it
    # is positive when status 1 says the payment succeeded and may be zero otherwise (not
    # executed, waiting for funds).
    amount, currency = _money(fields, "amount", "currency")
    paid_amount, paid_currency = _money(
        fields, "payamount", "paycurrency", zero_ok=provider_status != "1"
    )
    status = _STATUSES.get(provider_status, Status.UNRECOGNIZED)
    details = details_of(fields, _MACRO_DETAILS)
    if provider_status == "4":
        details["unconfirmed"] = True
    refund_amount = None
    variant = ""
    if provider_status == "3" and fields.get("refund_timestamp"):
        # A refund refunds something (positive); its commission may be nothing (zero).
        refund_amount, refund_currency = _money(fields, "refund_amount", "refund_currency")
        commission, commission_currency = _money(
            fields, "refund_commission_amount", "refund_commission_currency", zero_ok=True
        )
        status = _refund_status(
            refund_amount, refund_currency, ((amount, currency), (paid_amount, paid_currency))
        )
        # Two partial refunds of one payment share status 3; the timestamp tells them apart.
        variant = text_field(fields, "refund_timestamp", max_len=64) or ""
        details.update(refund_timestamp=variant)
        if refund_currency:
            details["refund_currency"] = refund_currency
        if commission is not None and commission_currency:
            details.update(
                refund_commission_amount=commission, refund_commission_currency=commission_currency
            )
    callback = CallbackReceived(
        provider="paysera",
        account=account.name,
        transaction_id=transaction_id,
        provider_status=provider_status,
        status=status,
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SIGNATURE,
        received_at=received_at,
        raw=request,
        order_id=order_id,
        amount=amount,
        currency=currency,
        paid_amount=paid_amount,
        paid_currency=paid_currency,
        refund_amount=refund_amount,
        test=fields.get("test") == "1",
        variant=variant,
        details=details,
    )
    return callback, Ack()


def _refund_status(
    refund: int | None,
    refund_currency: str | None,
    candidates: tuple[tuple[int | None, str | None], ...],
) -> Status:
    """Partial when the refund is smaller than the first amount in the same currency
    (the requested amount, else the paid amount); a full refund when nothing compares."""
    for amount, currency in candidates:
        if refund is not None and amount is not None and currency == refund_currency:
            return Status.PARTIALLY_REFUNDED if refund < amount else Status.REFUNDED
    return Status.REFUNDED


def _micro(
    fields: Mapping[str, str], request: RawRequest, account: ProviderAccount, received_at: str
) -> tuple[CallbackReceived, Ack]:
    transaction_id = required_text(fields, "id", max_len=64)
    amount, currency = _money(fields, "amount", "currency")
    # An SMS callback means the message was paid for; a status, when sent, is mapped as usual.
    provider_status = text_field(fields, "status", required=False, max_len=16) or "sms"
    if provider_status == "sms":
        status = Status.SUCCEEDED
    else:
        status = _STATUSES.get(provider_status, Status.UNRECOGNIZED)
    reply = opt_str(account, "sms_reply") or DEFAULT_SMS_REPLY
    callback = CallbackReceived(
        provider="paysera",
        account=account.name,
        transaction_id=transaction_id,
        provider_status=provider_status,
        status=status,
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SIGNATURE,
        received_at=received_at,
        raw=request,
        order_id=text_field(fields, "orderid", required=False, max_len=64),
        amount=amount,
        currency=currency,
        paid_amount=amount,
        paid_currency=currency,
        test=fields.get("test") == "1",
        details=details_of(fields, _MICRO_DETAILS),
    )
    return callback, Ack(body=b"OK " + reply.encode("utf-8"))


_SIMULATED_STATUS = {
    "failed": "0",
    "succeeded": "1",
    "pending": "2",
    "info": "3",
    "refunded": "3",
    "partially_refunded": "3",
}


def _simulated_fields(account: ProviderAccount, payment: SimulatedPayment) -> list[tuple[str, str]]:
    extra = payment.extra
    status = extra.get("provider_status") or _SIMULATED_STATUS.get(payment.status)
    if status is None:
        raise ValueError(f"paysera cannot send status {payment.status!r}")
    if payment.kind != "payment":
        raise ValueError("paysera sends payments only")
    project = opt_str(account, "project_id", required=True) or ""
    amount = str(major_to_minor(payment.amount, payment.currency))
    txn = payment.transaction_id or str(uuid.uuid4().int % 10**10)
    test = "1" if payment.test else "0"
    if extra.get("type") == "micro":
        return [
            ("projectid", project), ("to", "1679"), ("sms", "PAY " + payment.order_id),
            ("from", "37060000000"), ("operator", "tele2"), ("amount", amount),
            ("currency", payment.currency), ("country", "LT"), ("id", txn), ("test", test),
            ("version", "1.6"), ("type", "micro"),
        ]  # fmt: skip
    pay_currency = extra.get("pay_currency", payment.currency)
    pay_amount = major_to_minor(extra.get("pay_amount", payment.amount), pay_currency)
    fields = [
        ("projectid", project), ("orderid", payment.order_id), ("lang", "ENG"),
        ("amount", amount), ("currency", payment.currency), ("payment", "hanza"),
        ("country", "LT"), ("paytext", f"Order {payment.order_id}"), ("status", status),
        ("test", test), ("payamount", str(pay_amount)), ("paycurrency", pay_currency),
        ("requestid", txn), ("version", "1.6"), ("type", "macro"),
    ]  # fmt: skip
    if payment.status in ("refunded", "partially_refunded"):
        if "refund_amount" in extra:
            refund = major_to_minor(extra["refund_amount"], payment.currency)
        else:  # a full refund, or the smallest partial one
            refund = int(amount) if payment.status == "refunded" else 1
        fields += [
            ("refund_timestamp", extra.get("refund_timestamp", "1735689600")),
            ("refund_amount", str(refund)), ("refund_currency", payment.currency),
        ]  # fmt: skip
    return fields


PAYSERA = Paysera()
