"""PayCore.io: X-Signature over the exact bytes, live/test keys, invoice statuses, §3."""

from __future__ import annotations

import json

import pytest

from contracts.callbacks import RawRequest
from contracts.errors import ConfigError
from contracts.statuses import Kind, Status
from ingress.providers.paycore import PAYMENT_STATUSES, PAYOUT_STATUSES, signature

from .helpers import ENV, account, payment, raw, rejected, simulated, verify

EXAMPLE_BODY = (
    b'{"data":{"type":"payment-invoices","id":"cpi_TEST0000000000","attributes":{"status":'
    b'"processed","resolution":"ok","amount":22,"currency":"USD","reference_id":"ORD-1001",'
    b'"test_mode":true}}}'
)
EXAMPLE_SIG = "eREuX3KJvXSxDIuXa4U+NH2DYwc="


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
    exc = rejected("paycore", account("paycore"), post(body, sig))
    assert exc.status == 422


def test_live_key_must_match_test_mode() -> None:
    exc = rejected("paycore", account("paycore"), live(EXAMPLE_BODY))
    assert exc.status == 422


def test_live_only_account_refuses_test_callback() -> None:
    acc = account("paycore", test_key=None)
    assert rejected("paycore", acc, post(EXAMPLE_BODY, EXAMPLE_SIG)).status == 401


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
    ("amount", "status"), [("1.234", 400), ('"abc"', 400), ("[1]", 400), ("true", 400)]
)
def test_bad_amounts(amount: str, status: int) -> None:
    body = (
        b'{"data":{"type":"payment-invoices","id":"cpi_1","attributes":{"status":"processed",'
        b'"amount":' + amount.encode() + b',"currency":"EUR","test_mode":false}}}'
    )
    assert rejected("paycore", account("paycore"), live(body)).status == status


def test_unknown_currency() -> None:
    body = invoice({"status": "processed", "amount": 1, "currency": "ZZZ", "test_mode": False})
    assert rejected("paycore", account("paycore"), live(body)).status == 422


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
    ("body", "sig", "status"),
    [
        (EXAMPLE_BODY, None, 400),
        (EXAMPLE_BODY, "", 400),
        (EXAMPLE_BODY, "not base64", 401),
        (EXAMPLE_BODY, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", 401),
        (EXAMPLE_BODY + b" ", EXAMPLE_SIG, 401),
        (EXAMPLE_BODY.replace(b"22", b"23"), EXAMPLE_SIG, 401),
    ],
)
def test_rejections(body: bytes, sig: str | None, status: int) -> None:
    assert rejected("paycore", account("paycore"), post(body, sig)).status == status


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'{"data":1}',
        b'{"data":{"attributes":[]}}',
        b'{"data":{}}',
        b'{"data":{"type":"payment-invoices","attributes":{"status":"processed"}}}',
        b'{"data":{"type":"payment-invoices","id":"x","attributes":{"test_mode":"no"}}}',
        b'{"a":1,"a":2}',
        b"\xff\xfe",
    ],
)
def test_malformed_but_signed(body: bytes) -> None:
    assert rejected("paycore", account("paycore"), live(body)).status == 400


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
