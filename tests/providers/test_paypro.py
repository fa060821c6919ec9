"""Paypro: md5 over sorted key=value pairs with the app secret as salt, §4."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts.callbacks import RawRequest
from contracts.errors import ConfigError
from contracts.statuses import Kind, Status
from ingress.providers.paypro import sign, string_to_sign

from .helpers import ENV, account, payment, raw, refusal, simulated, verify

SECRET = ENV["PAYPRO_SECRET"]
EXAMPLE: dict[str, Any] = {
    "platFormTradeNo": "5286e98841194687a95d25b5f3be346d",
    "tradeNo": "00000020",
    "amount": "30000",
    "status": "0000",
    "message": "SUCCESS",
    "successTime": "2024-07-01 18:34:31",
    "timestamp": "1724740395968",
    "remark": "",
}
EXAMPLE_STRING = (
    "amount=30000message=SUCCESSplatFormTradeNo=5286e98841194687a95d25b5f3be346dstatus=0000"
    "successTime=2024-07-01 18:34:31timestamp=1724740395968tradeNo=00000020"
)
APPENDED = "1d6ed086a4d537adae05f500c564f2ff"
PREPENDED = "c8153552233fddc07d770d2575d338a7"


def notify(doc: dict[str, Any]) -> RawRequest:
    return raw("POST", body=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})


def signed(doc: dict[str, Any], position: str = "append", secret: str = SECRET) -> RawRequest:
    return notify({**doc, "sign": sign(doc, secret, position)})


def test_worked_example_string_and_signs() -> None:
    assert string_to_sign(EXAMPLE) == EXAMPLE_STRING
    assert sign(EXAMPLE, SECRET, "append") == APPENDED
    assert sign(EXAMPLE, SECRET, "prepend") == PREPENDED


@pytest.mark.parametrize(
    ("position", "accepted"),
    [
        ("append", {APPENDED}),
        ("prepend", {PREPENDED}),
        ("either", {APPENDED, PREPENDED}),
    ],
)
def test_salt_position_setting(position: str, accepted: set[str]) -> None:
    acc = account("paypro", salt_position=position)
    for candidate in (APPENDED, PREPENDED):
        request = notify({**EXAMPLE, "sign": candidate})
        if candidate in accepted:
            result = verify("paypro", acc, request)
            cb = result.callback
            assert result.ack.body == b"OK"
            assert (cb.transaction_id, cb.order_id, cb.status) == (
                "5286e98841194687a95d25b5f3be346d",
                "00000020",
                Status.SUCCEEDED,
            )
            assert (cb.amount, cb.paid_amount, cb.currency) == (3000000, 3000000, "IDR")
            assert cb.details["successTime"] == "2024-07-01 18:34:31"
        else:
            assert refusal("paypro", acc, request) == (401, "bad signature")


def test_null_and_numbers_are_signed_as_java_prints_them() -> None:
    doc = {**EXAMPLE, "channelCode": None, "amount": 30000}
    assert "channelCode=null" in string_to_sign(doc)
    assert verify("paypro", account("paypro"), signed(doc)).callback.paid_amount == 3000000


def test_rotated_secret() -> None:
    acc = account("paypro", app_secret=["env:PAYPRO_SECRET_NEXT", "env:PAYPRO_SECRET"])
    assert verify("paypro", acc, notify({**EXAMPLE, "sign": APPENDED})).callback


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0000", Status.SUCCEEDED),
        ("0001", Status.PARTIALLY_PAID),
        ("0015", Status.PENDING),
        ("00029", Status.FAILED),
        ("0100019", Status.FAILED),
        ("00032", Status.FAILED),
    ],
)
def test_statuses(code: str, expected: Status) -> None:
    doc = {**EXAMPLE, "status": code}
    cb = verify("paypro", account("paypro"), signed(doc)).callback
    assert (cb.status, cb.provider_status, cb.kind) == (expected, code, Kind.PAYMENT)


def test_partial_payment_uses_real_amount() -> None:
    cb = verify("paypro", account("paypro"), signed({**EXAMPLE, "status": "0001"})).callback
    assert (cb.amount, cb.paid_amount, cb.variant) == (None, 3000000, "3000000")


def test_kind_from_account() -> None:
    payout = account("paypro", kind="payout")
    cb = verify("paypro", payout, signed(EXAMPLE)).callback
    assert cb.kind is Kind.PAYOUT
    # Partial payment is a payin notion; on a payout it is not guessed.
    cb = verify("paypro", payout, signed({**EXAMPLE, "status": "0001"})).callback
    assert cb.status is Status.UNRECOGNIZED


def test_kind_auto_by_prefix() -> None:
    acc = account("paypro", kind="auto", payout_prefixes=["PO-", "WD"])
    assert verify("paypro", acc, signed({**EXAMPLE, "tradeNo": "PO-7"})).callback.kind is (
        Kind.PAYOUT
    )
    assert verify("paypro", acc, signed(EXAMPLE)).callback.kind is Kind.PAYMENT


def test_test_flag_from_account() -> None:
    assert verify("paypro", account("paypro", test=True), signed(EXAMPLE)).callback.test is True


@pytest.mark.parametrize(
    ("doc", "status", "reason"),
    [
        ({**EXAMPLE}, 400, "missing sign"),
        ({**EXAMPLE, "sign": ""}, 400, "missing sign"),
        ({**EXAMPLE, "sign": "xyz"}, 401, "bad signature"),
        ({**EXAMPLE, "sign": APPENDED.upper()}, 401, "bad signature"),
        ({**EXAMPLE, "amount": "30001", "sign": APPENDED}, 401, "bad signature"),
    ],
)
def test_rejections(doc: dict[str, Any], status: int, reason: str) -> None:
    assert refusal("paypro", account("paypro"), notify(doc)) == (status, reason)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"platFormTradeNo": ""}, "missing platFormTradeNo"),
        ({"tradeNo": None}, "missing tradeNo"),
        ({"amount": "12.345"}, "invalid amount"),  # IDR has 2 decimals
        ({"amount": {"x": 1}}, "amount is not a number"),
    ],
)
def test_malformed_but_signed(change: dict[str, Any], reason: str) -> None:
    doc = {k: v for k, v in {**EXAMPLE, **change}.items() if v is not None}
    assert refusal("paypro", account("paypro"), signed(doc)) == (400, reason)


def test_malformed_bodies() -> None:
    acc = account("paypro")
    for body, reason in (
        (b"", "body is not valid JSON"),
        (b"[]", "body is not a JSON object"),
        (b"OK", "body is not valid JSON"),
        (b'{"sign":1}', "missing sign"),
        (b"\x00", "body is not valid JSON"),
    ):
        assert refusal("paypro", acc, raw("POST", body=body)) == (400, reason)


def test_simulator_uses_configured_position() -> None:
    acc = account("paypro", salt_position="prepend", currency="MXN")
    sim, request = simulated("paypro", acc, payment(currency="MXN", amount="100.50"))
    assert sim.retry_schedule == (2, 5, 10, 30, 3600, 10800, 10800, 10800)
    cb = verify("paypro", acc, request).callback
    assert (cb.paid_amount, cb.currency) == (10050, "MXN")
    with pytest.raises(ValueError, match="MXN"):
        simulated("paypro", acc, payment(currency="EUR"))


def test_check_account() -> None:
    with pytest.raises(ConfigError, match="app_secret"):
        account("paypro", app_secret=None)
    with pytest.raises(ConfigError, match="currency"):
        account("paypro", currency=None)
    with pytest.raises(ConfigError, match="currency"):
        account("paypro", currency="ZZZ")
    with pytest.raises(ConfigError, match="salt_position"):
        account("paypro", salt_position="middle")
    with pytest.raises(ConfigError, match="kind"):
        account("paypro", kind="refund")
    with pytest.raises(ConfigError, match="payout_prefixes"):
        account("paypro", kind="auto")
