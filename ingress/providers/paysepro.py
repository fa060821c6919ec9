"""Paysepro payment notifications: GET, no signature at all (providers.md §5).

The only proofs are the source address (Paysepro's documented 51.195.200.178 unless the account
lists its own) and the account's ``uid``/``mid``. Callbacks are marked ``source_address`` so the
ledger can be stricter with them. ``result=ko`` means not paid yet: a later ``ok`` with the same
``code`` completes the payment.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from urllib.parse import urlencode

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import PAYSERA_RETRY_SCHEDULE, ProviderAccount
from contracts.money import major_to_minor
from contracts.statuses import Kind, Status, VerifiedBy
from ingress.providers._common import (
    amount_and_currency,
    details_of,
    opt_str,
    request_params,
    required_text,
    text_field,
)
from ingress.providers.base import (
    Accepted,
    Ack,
    Rejected,
    SimulatedPayment,
    SimulatedRequest,
)

__all__ = ["DEFAULT_SOURCE", "PAYSEPRO", "Paysepro"]

DEFAULT_SOURCE = "51.195.200.178"
# Paysepro documents no retry schedule; the simulator uses Paysera's.
RETRY_SCHEDULE = PAYSERA_RETRY_SCHEDULE
_STATUSES: Mapping[str, Status] = {"ok": Status.SUCCEEDED, "ko": Status.PENDING}
# `email` is the payer's: it stays in `raw` only.
_DETAILS = ("type", "country")


class Paysepro:
    name = "paysepro"
    relevant_headers: tuple[str, ...] = ()

    def check_account(self, account: ProviderAccount) -> None:
        opt_str(account, "uid", required=True)
        opt_str(account, "mid", required=True)

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        # The ingress checks `allowed_ips` for every provider; with none configured, Paysepro's
        # own address is the default here, because nothing else proves a Paysepro callback.
        if not account.ip_allowed(request.remote) or (
            not account.allowed_ips and not _is_default_source(request.remote)
        ):
            raise Rejected(403, "source address not allowed", remote=request.remote[:64])
        fields = request_params(request.query_string, request.body)
        for key in ("uid", "mid"):
            value = required_text(fields, key, max_len=32)
            if value != opt_str(account, key, required=True):
                raise Rejected(422, f"wrong {key}", **{key: value[:20]})
        provider_status = required_text(fields, "result", max_len=16)
        # `price` is what the payment is for, sent alike with `ok` and `ko`: always positive.
        amount, currency = amount_and_currency(fields, "price", "currency")
        callback = CallbackReceived(
            provider="paysepro",
            account=account.name,
            transaction_id=required_text(fields, "code", max_len=128),
            provider_status=provider_status,
            status=_STATUSES.get(provider_status, Status.UNRECOGNIZED),
            kind=Kind.PAYMENT,
            verified_by=VerifiedBy.SOURCE_ADDRESS,
            received_at=received_at,
            raw=request,
            order_id=text_field(fields, "ucode", required=False),
            amount=amount,
            currency=currency,
            paid_amount=amount,
            paid_currency=currency,
            test=fields.get("mode") == "debug",
            details=details_of(fields, _DETAILS),
        )
        return Accepted(callback=callback, ack=Ack())

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        result = payment.extra.get("provider_status") or _SIMULATED.get(payment.status)
        if result is None or payment.kind != "payment":
            raise ValueError(f"paysepro cannot send {payment.kind} status {payment.status!r}")
        major_to_minor(payment.amount, payment.currency)
        fields = [
            ("uid", opt_str(account, "uid", required=True) or ""),
            ("mid", opt_str(account, "mid", required=True) or ""),
            ("country", payment.extra.get("country", "ES")),
            ("price", payment.amount),
            ("currency", payment.currency),
            ("code", payment.transaction_id or uuid.uuid4().hex[:12].upper()),
            ("email", "payer@example.com"),
            ("result", result),
            ("ucode", payment.order_id),
            ("type", payment.extra.get("type", "creditcard")),
        ]
        if payment.test:
            fields.append(("mode", "debug"))
        source = account.allowed_ips[0].network_address if account.allowed_ips else DEFAULT_SOURCE
        return SimulatedRequest(
            method="GET",
            query_string=urlencode(fields),
            # Only honoured when the ingress trusts the simulator's address as a proxy
            # (`[ingress] trusted_proxies`); otherwise the allow-list refuses it, as it should.
            headers={"X-Forwarded-For": str(source)},
            retry_schedule=RETRY_SCHEDULE,
        )


_SIMULATED = {"succeeded": "ok", "pending": "ko"}


def _is_default_source(remote: str) -> bool:
    try:
        return ipaddress.ip_address(remote) == ipaddress.ip_address(DEFAULT_SOURCE)
    except ValueError:
        return False


PAYSEPRO = Paysepro()
