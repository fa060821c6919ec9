"""Every provider module refuses an authentic callback whose amount the ledger cannot hold
(more than a signed 64-bit integer of minor units) or that is negative, or zero where the
provider's protocol has no use for zero; and accepts zero where it has. The reason says which
field and what is wrong: it is the body the provider (and its operator) sees."""

from __future__ import annotations

import pytest

from contracts.callbacks import encode_callback

from . import signed
from .helpers import account, rejected, verify
from .signed import Signed, as_json

TOO_LARGE = "out of range"
POSITIVE = "must be positive"
NOT_NEGATIVE = "must not be negative"

REFUSED: list[tuple[Signed, str]] = [
    # Paysera: minor units in form fields.
    (signed.paysera(amount="9223372036854775808"), f"amount {TOO_LARGE}"),
    (signed.paysera(amount="123456789012345678901234567890"), f"amount {TOO_LARGE}"),
    (signed.paysera(amount="-400"), f"amount {POSITIVE}"),
    (signed.paysera(amount="0"), f"amount {POSITIVE}"),
    (signed.paysera(payamount="9223372036854775808"), f"payamount {TOO_LARGE}"),
    (signed.paysera(payamount="0"), f"payamount {POSITIVE}"),  # status 1: it was paid
    (signed.paysera(status="0", payamount="-1"), f"payamount {NOT_NEGATIVE}"),
    (
        signed.paysera(
            status="3", refund_timestamp="1735689600", refund_amount="0", refund_currency="EUR"
        ),
        f"refund_amount {POSITIVE}",
    ),
    (
        signed.paysera(
            status="3",
            refund_timestamp="1735689600",
            refund_amount="100",
            refund_currency="EUR",
            refund_commission_amount="-5",
            refund_commission_currency="EUR",
        ),
        f"refund_commission_amount {NOT_NEGATIVE}",
    ),
    (signed.paysera(type="micro", amount="9223372036854775808"), f"amount {TOO_LARGE}"),
    (signed.paysera(type="micro", amount="-100"), f"amount {POSITIVE}"),
    # Paygol: major-unit strings (legacy form fields, V2 JSON) and JSON numbers in V2.
    (signed.paygol_legacy(price="92233720368547758.08"), f"price {TOO_LARGE}"),
    (signed.paygol_legacy(frmprice="-10.00"), f"frmprice {POSITIVE}"),
    (signed.paygol_legacy(price="0.00"), f"price {POSITIVE}"),
    (signed.paygol_v2(as_json("123456789012345678901234567890")), f"price {TOO_LARGE}"),
    (signed.paygol_v2(b"123456789012345678901234567890"), f"price {TOO_LARGE}"),
    (signed.paygol_v2(b"1e400"), f"price {TOO_LARGE}"),
    (signed.paygol_v2(as_json("-4.00")), f"price {POSITIVE}"),
    (signed.paygol_v2(b"0", status="failed"), f"price {POSITIVE}"),
    # PayCore: major-unit JSON numbers.
    (signed.paycore(amount=b"123456789012345678901234567890"), f"amount {TOO_LARGE}"),
    (signed.paycore(amount=b"1e400"), f"amount {TOO_LARGE}"),
    (signed.paycore(amount=b"-1e400"), f"amount {TOO_LARGE}"),
    (signed.paycore(amount=b"1e999999999"), f"amount {TOO_LARGE}"),
    (signed.paycore(amount=b"92233720368547758.08"), f"amount {TOO_LARGE}"),
    (signed.paycore(amount=b"-4.00"), f"amount {POSITIVE}"),  # the operator's -4.00 "succeeded"
    (signed.paycore(amount=b"0"), f"amount {POSITIVE}"),
    (signed.paycore(amount=as_json("-4.00")), f"amount {POSITIVE}"),
    (signed.paycore(fee=b"1e30"), f"fee {TOO_LARGE}"),
    (signed.paycore(fee=b"-1"), f"fee {NOT_NEGATIVE}"),
    (signed.paycore(processed_amount=b"-22"), f"processed_amount {NOT_NEGATIVE}"),
    (
        signed.paycore("partially_refunded", refunded_amount=b"-1"),
        f"refunded_amount {NOT_NEGATIVE}",
    ),
    (signed.paycore("processed", "payout-invoices", amount=b"-5"), f"amount {POSITIVE}"),
    # Paypro: a string or a number, in the account's currency (IDR here).
    (signed.paypro(as_json("92233720368547758.08")), f"amount {TOO_LARGE}"),
    (signed.paypro(b"123456789012345678901234567890"), f"amount {TOO_LARGE}"),
    (signed.paypro(b"1e400"), f"amount {TOO_LARGE}"),
    (signed.paypro(as_json("-30000")), f"amount {POSITIVE}"),
    (signed.paypro(as_json("0")), f"amount {POSITIVE}"),  # 0000: it was paid
    (signed.paypro(as_json("0"), status="0001"), f"amount {POSITIVE}"),  # partly paid
    (signed.paypro(as_json("-1"), status="00029"), f"amount {NOT_NEGATIVE}"),
    # Paysepro: a major-unit form field.
    (signed.paysepro(price="92233720368547758.08"), f"price {TOO_LARGE}"),
    (signed.paysepro(price="-10.00"), f"price {POSITIVE}"),
    (signed.paysepro(price="0", result="ko"), f"price {POSITIVE}"),
]

ACCEPTED: list[tuple[Signed, str, int]] = [
    # The 64-bit bounds themselves are money.
    (signed.paysera(amount="9223372036854775807"), "amount", 2**63 - 1),
    (signed.paycore(amount=b"92233720368547758.07"), "amount", 2**63 - 1),
    (signed.paygol_v2(b"92233720368547758.07"), "amount", 2**63 - 1),
    (signed.paysepro(price="92233720368547758.07"), "amount", 2**63 - 1),
    (signed.paypro(as_json("92233720368547758.07")), "paid_amount", 2**63 - 1),
    # Zero where the protocol has a use for it.
    (signed.paysera(status="0", payamount="0"), "paid_amount", 0),  # not executed
    (signed.paysera(status="2", payamount="0"), "paid_amount", 0),  # funds not received yet
    (
        signed.paysera(
            status="3",
            refund_timestamp="1735689600",
            refund_amount="100",
            refund_currency="EUR",
            refund_commission_amount="0",
            refund_commission_currency="EUR",
        ),
        "refund_amount",
        100,
    ),
    (signed.paycore(fee=b"0"), "fee_amount", 0),
    (signed.paycore("processing", processed_amount=b"0"), "paid_amount", 0),
    (signed.paycore("refund_pending", refunded_amount=b"0"), "refund_amount", 0),
    (signed.paypro(as_json("0"), status="00029"), "paid_amount", 0),  # failed: nothing paid
    (signed.paypro(b"0", status="0015"), "paid_amount", 0),  # processing
]


def _id(case: tuple[Signed, ...]) -> str:
    return case[0].provider


@pytest.mark.parametrize(("request_", "reason"), REFUSED, ids=[_id(c) for c in REFUSED])
def test_authentic_callback_with_unusable_amount_is_refused(request_: Signed, reason: str) -> None:
    refusal = rejected(request_.provider, account(request_.provider), request_.raw())
    assert (refusal.status, refusal.reason) == (400, reason)


@pytest.mark.parametrize(("request_", "attr", "minor"), ACCEPTED, ids=[_id(c) for c in ACCEPTED])
def test_bounds_and_documented_zeros_are_accepted(request_: Signed, attr: str, minor: int) -> None:
    callback = verify(request_.provider, account(request_.provider), request_.raw()).callback
    assert getattr(callback, attr) == minor
    encode_callback(callback)  # and the broker's codec can write it


@pytest.mark.parametrize(
    "detail",
    [b'"moderation_required":123456789012345678901234567890', b'"payment_amount":1e400'],
)
def test_paycore_numbers_the_codec_cannot_write_stay_out_of_details(detail: bytes) -> None:
    """Details are informational: an odd number there is no reason to refuse the callback,
    but it must not reach the encoder (it stays in ``raw``)."""
    body = signed.paycore().body.replace(
        b'"resolution":"ok",', b'"resolution":"ok",' + detail + b","
    )
    callback = verify("paycore", account("paycore"), signed.paycore_body(body).raw()).callback
    assert callback.details["resolution"] == "ok"
    assert not {"moderation_required", "payment_amount"} & set(callback.details)
    encode_callback(callback)
