"""Paygol: legacy IPN (plaintext key) and IPN V2 (X-Pg-Sig over canonical JSON), §2."""

from __future__ import annotations

import hashlib
import hmac
import json
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from contracts.callbacks import RawRequest
from contracts.errors import ConfigError
from contracts.statuses import Status, VerifiedBy
from ingress.providers.paygol import canonical_json, php_json

from .helpers import ENV, account, payment, raw, refusal, rejected, simulated, verify

SECRET = ENV["PAYGOL_SECRET"]
EXAMPLE = {
    "transaction_id": "ZISS-A7Q8-RE2Z-S73W",
    "status": "completed",
    "service_id": "123",
    "price": "10.00",
    "method": "teleingreso",
    "custom": "Order 1001",
    "currency": "USD",
    "country": "ES",
}
EXAMPLE_CANONICAL = (
    '{"country":"ES","currency":"USD","custom":"Order 1001","method":"teleingreso",'
    '"price":"10.00","service_id":"123","status":"completed","transaction_id":"ZISS-A7Q8-RE2Z-S73W"}'
)
EXAMPLE_SIG = "49f723e535c913526f1a66afa37f8524cc6066f3a8e3d5b505f45a52a160b15c"


def v2(body: bytes, sig: str | None, header: str = "X-Pg-Sig") -> RawRequest:
    headers = {"Content-Type": "application/json"}
    if sig is not None:
        headers[header] = sig
    return raw("POST", body=body, headers=headers)


def hmac_hex(message: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# --- V2 ----------------------------------------------------------------------------------------


def test_worked_example_canonical_form() -> None:
    assert canonical_json(EXAMPLE).decode() == EXAMPLE_CANONICAL
    assert hmac_hex(EXAMPLE_CANONICAL.encode()) == EXAMPLE_SIG


@pytest.mark.parametrize("header", ["X-Pg-Sig", "x-pg-sig", "X-PG-SIG"])
def test_worked_example_verifies(header: str) -> None:
    body = json.dumps(EXAMPLE).encode()  # the body's own key order and spacing do not matter
    accepted = verify("paygol", account("paygol"), v2(body, EXAMPLE_SIG, header))
    cb = accepted.callback
    assert accepted.ack.status == 200
    assert accepted.ack.body == b'["OK"]'
    assert accepted.ack.content_type == "application/json"
    assert (cb.transaction_id, cb.order_id, cb.provider_status) == (
        "ZISS-A7Q8-RE2Z-S73W",
        "Order 1001",
        "completed",
    )
    assert (cb.status, cb.amount, cb.currency) == (Status.SUCCEEDED, 1000, "USD")
    assert cb.verified_by is VerifiedBy.SIGNATURE
    assert cb.details == {"method": "teleingreso", "country": "ES"}


def test_raw_body_match_is_accepted() -> None:
    # A float PHP would print differently: only the raw-body HMAC can match it.
    body = (
        b'{"transaction_id":"T1","status":"completed","service_id":"123",'
        b'"price":1e1,"currency":"USD"}'
    )
    cb = verify("paygol", account("paygol"), v2(body, hmac_hex(body))).callback
    assert cb.amount == 1000


def test_rotated_secret() -> None:
    acc = account("paygol", secret=["env:PAYGOL_SECRET_NEXT", "env:PAYGOL_SECRET"])
    body = json.dumps(EXAMPLE).encode()
    assert verify("paygol", acc, v2(body, EXAMPLE_SIG)).callback


def test_natural_case_insensitive_key_order() -> None:
    doc = {"transactions": 1, "transaction_id": 2, "a10": 3, "a2": 4, "B": 5, "a": 6}
    assert (
        canonical_json(doc) == b'{"a":6,"a2":4,"a10":3,"B":5,"transactions":1,"transaction_id":2}'
    )


def test_php_json_encoding() -> None:
    assert php_json({"u": "a/b é", "e": {}, "l": [1, None, True], "d": Decimal("10.50")}) == (
        '{"u":"a\\/b \\u00e9","e":[],"l":[1,null,true],"d":10.5}'
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("completed", Status.SUCCEEDED),
        ("created", Status.PENDING),
        ("failed", Status.FAILED),
        ("rejected", Status.FAILED),
        ("chargeback", Status.UNRECOGNIZED),
    ],
)
def test_v2_statuses(status: str, expected: Status) -> None:
    acc = account("paygol")
    _, request = simulated("paygol", acc, payment(extra={"provider_status": status}))
    accepted = verify("paygol", acc, request)
    assert accepted.callback.status is expected
    assert accepted.ack.body == b'["OK"]'


def test_v2_rejections() -> None:
    acc = account("paygol")
    body = json.dumps(EXAMPLE).encode()
    bad = (401, "bad signature")
    assert refusal("paygol", acc, v2(body, None)) == (400, "missing X-Pg-Sig")
    assert refusal("paygol", acc, v2(body, "")) == (400, "missing X-Pg-Sig")
    assert refusal("paygol", acc, v2(body, "zz")) == bad
    assert refusal("paygol", acc, v2(body, EXAMPLE_SIG.upper())) == bad  # PHP sends lowercase
    wrong = hmac_hex(EXAMPLE_CANONICAL.encode(), "other")
    assert refusal("paygol", acc, v2(body, wrong)) == bad
    forged = json.dumps({**EXAMPLE, "price": "1000.00"}).encode()
    assert refusal("paygol", acc, v2(forged, EXAMPLE_SIG)) == bad
    assert refusal("paygol", acc, v2(b"{not json", EXAMPLE_SIG)) == (400, "body is not valid JSON")
    assert refusal("paygol", acc, v2(b"[1]", hmac_hex(b"[1]"))) == (
        400,
        "body is not a JSON object",
    )


def test_v2_wrong_service() -> None:
    doc = {**EXAMPLE, "service_id": "999"}
    body = json.dumps(doc).encode()
    exc = rejected("paygol", account("paygol"), v2(body, hmac_hex(canonical_json(doc))))
    assert (exc.status, exc.reason) == (422, "wrong service_id")


def test_v2_unknown_currency() -> None:
    doc = {**EXAMPLE, "currency": "ZZZ"}
    body = json.dumps(doc).encode()
    assert refusal("paygol", account("paygol"), v2(body, hmac_hex(body))) == (
        422,
        "unknown currency",
    )


def test_v2_deep_nesting_is_refused() -> None:
    body = b'{"a":' + b"[" * 500 + b"]" * 500 + b"}"
    assert refusal("paygol", account("paygol"), v2(body, hmac_hex(body))) == (
        400,
        "JSON body nested too deeply",
    )


# --- legacy ------------------------------------------------------------------------------------


LEGACY_WEB = {
    "transaction_id": "PG-1",
    "service_id": "123",
    "country": "ES",
    "custom": "ORD-1001",
    "price": "12.00",
    "currency": "USD",
    "frmprice": "10.00",
    "frmcurrency": "EUR",
    "key": SECRET,
}


def test_legacy_web() -> None:
    query = urlencode(LEGACY_WEB)
    accepted = verify("paygol", account("paygol"), raw(query=query))
    cb = accepted.callback
    assert (accepted.ack.status, accepted.ack.body) == (200, b"OK")
    assert (cb.transaction_id, cb.order_id, cb.status, cb.provider_status) == (
        "PG-1",
        "ORD-1001",
        Status.SUCCEEDED,
        "completed",
    )
    assert (cb.amount, cb.currency, cb.paid_amount, cb.paid_currency) == (1000, "EUR", 1200, "USD")
    assert cb.verified_by is VerifiedBy.SHARED_SECRET
    # The key is the service secret: it must not travel on in the event.
    assert SECRET not in cb.raw.query_string
    assert "key=REDACTED" in cb.raw.query_string


def test_legacy_sms() -> None:
    acc = account("paygol")
    _, request = simulated("paygol", acc, payment(extra={"version": "legacy", "type": "sms"}))
    cb = verify("paygol", acc, request).callback
    assert cb.status is Status.SUCCEEDED
    assert cb.details["keyword"] == "PAY"
    assert "sender" not in cb.details
    assert "message" not in cb.details


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"key": "wrong"}, 401, "wrong key"),
        ({"key": ""}, 400, "missing key"),
        ({"service_id": "999"}, 422, "wrong service_id"),
        ({"currency": "ZZZ"}, 422, "unknown currency"),
        ({"price": "1.234"}, 400, "invalid amount"),
        ({"transaction_id": ""}, 400, "missing message_id"),  # then it must be an SMS IPN
    ],
)
def test_legacy_rejections(change: dict[str, str], status: int, reason: str) -> None:
    query = urlencode({**LEGACY_WEB, **change})
    assert refusal("paygol", account("paygol"), raw(query=query)) == (status, reason)


def test_nothing_at_all() -> None:
    assert refusal("paygol", account("paygol"), raw()) == (400, "missing key")


def test_legacy_only_for_completed() -> None:
    acc = account("paygol")
    with pytest.raises(ValueError, match="completed"):
        simulated("paygol", acc, payment("failed", extra={"version": "legacy"}))


def test_check_account() -> None:
    with pytest.raises(ConfigError, match="service_id"):
        account("paygol", service_id=None)
    with pytest.raises(ConfigError, match="secret"):
        account("paygol", secret=None)
