"""PayCore.io: X-Signature over the exact bytes, live/test keys, invoice statuses, §3."""

from __future__ import annotations

import json

import pytest

from contracts.callbacks import RawRequest
from contracts.errors import ConfigError
from contracts.statuses import Kind, Status
from ingress.providers.paycore import PAYMENT_STATUSES, PAYOUT_STATUSES, signature

from .helpers import ENV, account, payment, raw, refusal, simulated, verify

EXAMPLE_BODY = (
    b'{"data":{"type":"payment-invoices","id":"cpi_TEST0000000000","attributes":{"status":'
    b'"processed","resolution":"ok","amount":22,"currency":"USD","reference_id":"ORD-1001",'
    b'"test_mode":true}}}'
)
EXAMPLE_SIG = "eREuX3KJvXSxDIuXa4U+NH2DYwc="
TEST_MODE_DISAGREES = "test_mode disagrees with the key that signed"


def post(body: bytes, sig: str | None) -> RawRequest:
    headers = {"Content-Type": "application/json"}
    if sig is not None:
        headers["X-Signature"] = sig
    return raw("POST", body=body, headers=headers)


def invoice(attributes: dict[str, object], kind: str = "payment-invoices") -> bytes:
    doc = {"data": {"type": kind, "id": "cpi_X1", "attributes": attributes}}
    return json.dumps(doc, separators=(",", ":")).encode()


def live(body: bytes) -> RawRequest:
    return post(body, signature(ENV["PAYCORE_LIVE"], body))


def test_worked_example() -> None:
    assert signature(ENV["PAYCORE_TEST"], EXAMPLE_BODY) == EXAMPLE_SIG
    accepted = verify("paycore", account("paycore"), post(EXAMPLE_BODY, EXAMPLE_SIG))
    cb = accepted.callback
    assert accepted.ack.status == 200
    assert (cb.transaction_id, cb.order_id, cb.provider_status) == (
        "cpi_TEST0000000000",
        "ORD-1001",
        "processed",
    )
    assert (cb.status, cb.kind, cb.amount, cb.currency) == (
        Status.SUCCEEDED,
        Kind.PAYMENT,
        2200,
        "USD",
    )
    assert cb.test is True
    assert cb.details["resolution"] == "ok"


def test_test_key_must_match_test_mode() -> None:
    # Signed with the test key but claiming live mode.
    body = EXAMPLE_BODY.replace(b'"test_mode":true', b'"test_mode":false')
    sig = signature(ENV["PAYCORE_TEST"], body)
    assert refusal("paycore", account("paycore"), post(body, sig)) == (422, TEST_MODE_DISAGREES)


def test_live_key_must_match_test_mode() -> None:
    assert refusal("paycore", account("paycore"), live(EXAMPLE_BODY)) == (422, TEST_MODE_DISAGREES)


def test_live_only_account_refuses_test_callback() -> None:
    acc = account("paycore", test_key=None)
    assert refusal("paycore", acc, post(EXAMPLE_BODY, EXAMPLE_SIG)) == (401, "bad signature")


def test_exact_decimal_amounts() -> None:
    body = invoice(
        {
            "status": "partially_processed",
            "amount": 3.33,
            "processed_amount": 1.1,
            "fee": 0.07,
            "refunded_amount": 0,
            "currency": "EUR",
            "test_mode": False,
            "payment_amount": 3.4,
            "service_currency": "EUR",
            "flow_data": {"method": "card"},
        }
    )
    cb = verify("paycore", account("paycore"), live(body)).callback
    assert (cb.amount, cb.paid_amount, cb.fee_amount, cb.fee_currency) == (333, 110, 7, "EUR")
    assert cb.status is Status.PARTIALLY_PAID
    assert cb.variant == "110"
    assert cb.details["method"] == "card"
    assert cb.details["payment_amount"] == "3.4"


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("1.234", "invalid amount"),
        ('"abc"', "invalid amount"),
        ("[1]", "amount is not a number"),
        ("true", "amount is not a number"),
    ],
)
def test_bad_amounts(amount: str, reason: str) -> None:
    body = (
        b'{"data":{"type":"payment-invoices","id":"cpi_1","attributes":{"status":"processed",'
        b'"amount":' + amount.encode() + b',"currency":"EUR","test_mode":false}}}'
    )
    assert refusal("paycore", account("paycore"), live(body)) == (400, reason)


def test_unknown_currency() -> None:
    body = invoice({"status": "processed", "amount": 1, "currency": "ZZZ", "test_mode": False})
    assert refusal("paycore", account("paycore"), live(body)) == (422, "unknown currency")


@pytest.mark.parametrize(("code", "expected"), sorted(PAYMENT_STATUSES.items()))
def test_payment_statuses(code: str, expected: Status) -> None:
    body = invoice({"status": code, "amount": 5, "currency": "EUR", "test_mode": False})
    cb = verify("paycore", account("paycore"), live(body)).callback
    assert (cb.status, cb.kind, cb.provider_status) == (expected, Kind.PAYMENT, code)


@pytest.mark.parametrize(("code", "expected"), sorted(PAYOUT_STATUSES.items()))
def test_payout_statuses(code: str, expected: Status) -> None:
    body = invoice(
        {
            "status": code,
            "amount": 5,
            "currency": "EUR",
            "fee": 1,
            "test_mode": False,
            "payouts": [{"id": "po_1", "status": code}],
        },
        kind="payout-invoices",
    )
    cb = verify("paycore", account("paycore"), live(body)).callback
    assert (cb.status, cb.kind, cb.fee_amount) == (expected, Kind.PAYOUT, 100)


def test_unknown_status_and_type_are_unrecognized() -> None:
    acc = account("paycore")
    body = invoice({"status": "teleported", "amount": 5, "currency": "EUR", "test_mode": False})
    accepted = verify("paycore", acc, live(body))
    assert accepted.callback.status is Status.UNRECOGNIZED
    assert accepted.ack.status == 200
    other = invoice({"status": "processed", "test_mode": False}, kind="refund-invoices")
    cb = verify("paycore", acc, live(other)).callback
    assert cb.status is Status.UNRECOGNIZED
    assert cb.details["type"] == "refund-invoices"


def test_resend_has_same_id_and_partial_refunds_differ() -> None:
    acc = account("paycore")
    first = invoice(
        {
            "status": "partially_refunded",
            "amount": 10,
            "refunded_amount": 2,
            "currency": "EUR",
            "test_mode": False,
            "updated": "2025-01-01T00:00:00Z",
        }
    )
    second = invoice(
        {
            "status": "partially_refunded",
            "amount": 10,
            "refunded_amount": 5,
            "currency": "EUR",
            "test_mode": False,
            "updated": "2025-01-02T00:00:00Z",
        }
    )
    a = verify("paycore", acc, live(first)).callback
    again = verify("paycore", acc, live(first)).callback
    b = verify("paycore", acc, live(second)).callback
    assert a.id == again.id
    assert a.id != b.id
    assert (a.refund_amount, b.refund_amount) == (200, 500)


@pytest.mark.parametrize(
    ("body", "sig", "status", "reason"),
    [
        (EXAMPLE_BODY, None, 400, "missing X-Signature"),
        (EXAMPLE_BODY, "", 400, "missing X-Signature"),
        (EXAMPLE_BODY, "not base64", 401, "bad signature"),
        (EXAMPLE_BODY, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", 401, "bad signature"),
        (EXAMPLE_BODY + b" ", EXAMPLE_SIG, 401, "bad signature"),
        (EXAMPLE_BODY.replace(b"22", b"23"), EXAMPLE_SIG, 401, "bad signature"),
    ],
)
def test_rejections(body: bytes, sig: str | None, status: int, reason: str) -> None:
    assert refusal("paycore", account("paycore"), post(body, sig)) == (status, reason)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body is not valid JSON"),
        (b"null", "data is not a JSON object"),
        (b"[]", "data is not a JSON object"),
        (b'{"data":1}', "data is not a JSON object"),
        (b'{"data":{"attributes":[]}}', "attributes is not a JSON object"),
        (b'{"data":{}}', "attributes is not a JSON object"),
        (
            b'{"data":{"type":"payment-invoices","attributes":{"status":"processed"}}}',
            "missing id",
        ),
        (
            b'{"data":{"type":"payment-invoices","id":"x","attributes":{"test_mode":"no"}}}',
            "test_mode is not a boolean",
        ),
        (b'{"a":1,"a":2}', "body is not valid JSON"),  # duplicate keys
        (b"\xff\xfe", "body is not valid JSON"),
    ],
)
def test_malformed_but_signed(body: bytes, reason: str) -> None:
    assert refusal("paycore", account("paycore"), live(body)) == (400, reason)


def test_simulated_payout_and_escaped_slashes() -> None:
    acc = account("paycore")
    sim, request = simulated("paycore", acc, payment("cancelled", order_id="A/B", kind="payout"))
    assert b'"A\\/B"' in sim.body
    cb = verify("paycore", acc, request).callback
    assert (cb.kind, cb.status, cb.provider_status, cb.order_id) == (
        Kind.PAYOUT,
        Status.CANCELLED,
        "canceled",
        "A/B",
    )


def test_retry_schedule() -> None:
    sim, _ = simulated("paycore", account("paycore"), payment())
    assert len(sim.retry_schedule) == 99
    assert sim.retry_schedule[:3] == (60.0, 120.0, 180.0)
    assert sim.expected_ack is None  # any 200 stops PayCore


def test_check_account() -> None:
    with pytest.raises(ConfigError, match="live_key"):
        account("paycore", live_key=None, test_key=None)
    with pytest.raises(ConfigError, match="test_key"):
        account("paycore", test_key="env:PAYCORE_LIVE")
    with pytest.raises(ConfigError, match="live_key"):
        account("paycore", live_key="inline")
