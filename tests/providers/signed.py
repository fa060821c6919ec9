"""Authentic callbacks with any amount: signed (or sent from Paysepro's address) exactly as the
provider would, so that only the amount can be why a module refuses them.

The simulator cannot build these: it refuses amounts that are not money. Each builder takes the
amount as the provider writes it: digits in a form field, a JSON string, or raw JSON number
text (``b"1e400"``) where the provider sends numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

from contracts.callbacks import RawRequest
from ingress.providers import PROVIDERS
from ingress.providers import _paysera_crypto as crypto
from ingress.providers._common import load_json
from ingress.providers.paycore import signature as paycore_signature
from ingress.providers.paypro import sign as paypro_sign
from ingress.providers.paysepro import DEFAULT_SOURCE

from .helpers import ENV

__all__ = [
    "Signed",
    "as_json",
    "paycore",
    "paycore_body",
    "paygol_legacy",
    "paygol_v2",
    "paypro",
    "paysepro",
    "paysera",
]


@dataclass(frozen=True)
class Signed:
    """One request as the provider sends it (to ``/callbacks/<provider>/main``)."""

    provider: str
    method: str
    query: str = ""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # The address the request comes from: Paysepro's own, so its allow-list passes.
    remote: str = "203.0.113.7"

    def raw(self) -> RawRequest:
        """The ``RawRequest`` the ingress builds from it (only the module's headers kept)."""
        wanted = {h.lower() for h in PROVIDERS[self.provider].relevant_headers}
        headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
        path = f"/callbacks/{self.provider}/main"
        return RawRequest(self.method, path, self.query, self.body, headers, self.remote)


def paysera(**fields: str) -> Signed:
    """A macro (or, with ``type="micro"``, SMS) callback, encrypted with the account password."""
    values = {
        "projectid": "123456", "orderid": "ORD-1001", "lang": "ENG", "amount": "1250",
        "currency": "EUR", "payment": "hanza", "country": "LT", "status": "1", "test": "0",
        "payamount": "1250", "paycurrency": "EUR", "requestid": "987654321",
        "version": "1.6", "type": "macro",
    }  # fmt: skip
    if fields.get("type") == "micro":
        values = {
            "projectid": "123456", "to": "1679", "sms": "PAY ORD-1", "from": "37060000000",
            "operator": "tele2", "amount": "100", "currency": "EUR", "country": "LT",
            "id": "SMS-1", "test": "0", "version": "1.6", "type": "micro",
        }  # fmt: skip
    values.update(fields)
    data = crypto.encrypt_gcm(urlencode(values).encode(), ENV["PAYSERA_PASSWORD"])
    return Signed("paysera", "GET", query=urlencode({"data": data}))


def paygol_legacy(**fields: str) -> Signed:
    """A legacy web IPN: authentic because it carries the service secret as ``key``."""
    values = {
        "transaction_id": "PG-1", "service_id": "123", "country": "ES", "custom": "ORD-1",
        "price": "10.00", "currency": "EUR", "frmprice": "10.00", "frmcurrency": "EUR",
    }  # fmt: skip
    values.update(fields, key=ENV["PAYGOL_SECRET"])
    return Signed("paygol", "GET", query=urlencode(values))


def paygol_v2(price: bytes, status: str = "completed") -> Signed:
    """An IPN V2 whose ``price`` is raw JSON (``b'"10.00"'`` or a number), HMAC over the raw
    body (which Paygol's check accepts besides the canonical form)."""
    body = (
        b'{"transaction_id":"PG-2","status":"' + status.encode() + b'","service_id":"123",'
        b'"price":' + price + b',"currency":"USD","custom":"ORD-2","country":"ES"}'
    )
    sig = hmac.new(ENV["PAYGOL_SECRET"].encode(), body, hashlib.sha256).hexdigest()
    return Signed(
        "paygol", "POST", body=body, headers={"Content-Type": "application/json", "X-Pg-Sig": sig}
    )


def paycore(status: str = "processed", kind: str = "payment-invoices", **amounts: bytes) -> Signed:
    """A live-key signed invoice; ``amounts`` are raw JSON values (``amount=b"1e400"``)."""
    numbers = {"amount": b"22", **amounts}
    attributes = b"".join(b'"' + k.encode() + b'":' + v + b"," for k, v in numbers.items())
    return paycore_body(
        b'{"data":{"type":"' + kind.encode() + b'","id":"cpi_AMOUNT1","attributes":{'
        b'"status":"'
        + status.encode()
        + b'","resolution":"ok",'
        + attributes
        + b'"currency":"USD",'
        b'"reference_id":"ORD-3","test_mode":false}}}'
    )


def paycore_body(body: bytes) -> Signed:
    """Exactly ``body``, signed with the live key."""
    headers = {
        "Content-Type": "application/json",
        "X-Signature": paycore_signature(ENV["PAYCORE_LIVE"], body),
    }
    return Signed("paycore", "POST", body=body, headers=headers)


def paypro(amount: bytes, status: str = "0000") -> Signed:
    """A notify whose ``amount`` is raw JSON; ``sign`` computed as Paypro's Java side would."""
    unsigned = (
        b'{"platFormTradeNo":"PP-1","tradeNo":"ORD-4","amount":' + amount + b',"status":"'
        + status.encode() + b'","message":"SUCCESS","timestamp":"1724740395968"}'
    )  # fmt: skip
    sign = paypro_sign(load_json(unsigned), ENV["PAYPRO_SECRET"])
    body = unsigned[:-1] + b',"sign":"' + sign.encode() + b'"}'
    return Signed("paypro", "POST", body=body, headers={"Content-Type": "application/json"})


def paysepro(**fields: str) -> Signed:
    """A notification from Paysepro's documented address (its only proof)."""
    values = {
        "uid": "12345", "mid": "54321", "country": "ES", "price": "10.00", "currency": "EUR",
        "code": "ABC123", "result": "ok", "ucode": "ORD-5",
    }  # fmt: skip
    values.update(fields)
    return Signed("paysepro", "GET", query=urlencode(values), remote=DEFAULT_SOURCE)


def as_json(value: str) -> bytes:
    """A JSON string literal."""
    return json.dumps(value).encode()
