import dataclasses

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.callbacks import (
    CallbackReceived,
    RawRequest,
    decode_callback,
    decode_callbacks,
    encode_callback,
    encode_callbacks,
)
from contracts.errors import DecodeError
from contracts.events import EVENT_TYPES, build_event, decode_event, encode_event, routing_key
from contracts.schema import event_schema, schema_filename
from contracts.statuses import Kind, Status, VerifiedBy

SCHEMAS = __import__("pathlib").Path(__file__).parents[2] / "contracts" / "schemas"


def make_callback(**overrides: object) -> CallbackReceived:
    base = CallbackReceived(
        provider="paysera",
        account="main",
        transaction_id="987654321",
        provider_status="1",
        status=Status.SUCCEEDED,
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SIGNATURE,
        received_at="2026-11-22T10:00:00.000000Z",
        raw=RawRequest("POST", "/callbacks/paysera/main", "", b"data=abc&ss1=x", {}, "127.0.0.1"),
        order_id="ORD-1001",
        amount=1250,
        currency="EUR",
        correlation_id="c0ffee",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_callback_round_trips_through_the_codec() -> None:
    callback = make_callback(
        details={"payment": "hanza"},
        raw=RawRequest("GET", "/x", "a=1", b"\xff\x00binary", {"X-Signature": "s"}, "10.0.0.1"),
    )
    decoded = decode_callback(encode_callback(callback))
    assert decoded == callback
    assert decoded.raw.body == b"\xff\x00binary"


def test_callback_id_is_deterministic_and_separates_transitions() -> None:
    assert make_callback().id == make_callback(correlation_id="other", amount=1).id
    assert make_callback().id != make_callback(provider_status="2").id
    assert make_callback().id != make_callback(variant="refund-1").id
    assert make_callback().id != make_callback(account="other").id


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{}",
        b'{"schema_version": 2}',
        b"not json",
        b'{"schema_version": 1, "provider": "x"}',
    ],
)
def test_decode_refuses_what_is_not_a_callback(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_callback(body)


def test_decode_refuses_float_amounts_and_tampered_ids() -> None:
    doc = make_callback().to_json()
    with pytest.raises(DecodeError):
        decode_callback(orjson.dumps({**doc, "amount": 12.5}))
    with pytest.raises(DecodeError):
        decode_callback(orjson.dumps({**doc, "transaction_id": "other"}))


def test_a_batch_body_decodes_to_each_callback_with_its_own_document() -> None:
    first, second = make_callback(), make_callback(transaction_id="T-2", amount=99)
    decoded = decode_callbacks(encode_callbacks([first, second]))
    assert [callback for callback, _ in decoded] == [first, second]
    # Each document stands alone (it is stored as the callback's history).
    assert [decode_callback(document) for _, document in decoded] == [first, second]
    single = encode_callback(first)
    assert decode_callbacks(single) == [(first, single)]


@pytest.mark.parametrize(
    "body",
    [b"[]", b"[1]", b'"text"', b"not json"],
)
def test_a_batch_body_refuses_what_is_not_callbacks(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_callbacks(body)


def test_one_bad_member_makes_the_whole_batch_poison() -> None:
    good = make_callback().to_json()
    with pytest.raises(DecodeError):
        decode_callbacks(orjson.dumps([good, {**good, "amount": 12.5}]))


def test_event_is_a_cloudevent_with_stable_id_and_routing_key() -> None:
    event = build_event(make_callback(), merchant="shop").to_dict()
    again = build_event(make_callback(received_at="2026-11-23T00:00:00Z"), merchant="shop")
    assert event["id"] == again.id
    assert event["specversion"] == "1.0"
    assert event["type"] == "payhook.payment.succeeded"
    assert event["source"] == "/payhook/paysera/main"
    assert event["subject"] == "987654321"
    assert event["correlationid"] == "c0ffee"
    assert event["data"]["amount"] == 1250
    mismatch = build_event(make_callback(), status=Status.AMOUNT_MISMATCH)
    assert mismatch.id != event["id"]
    assert mismatch.type == "payhook.payment.amount_mismatch"
    assert routing_key(Kind.PAYOUT, Status.FAILED, "paypro") == "payout.failed.paypro"
    typed = build_event(make_callback(), merchant="shop")
    assert decode_event(encode_event(typed)) == typed


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_schema_files_are_generated_from_the_code(event_type: str) -> None:
    on_disk = orjson.loads((SCHEMAS / schema_filename(event_type)).read_bytes())
    assert on_disk == event_schema(event_type), "run: python -m payhook.schema_files"


@given(
    kind=st.sampled_from(list(Kind)),
    status=st.sampled_from(list(Status)),
    amount=st.none() | st.integers(min_value=0, max_value=10**12),
    test=st.booleans(),
)
def test_every_event_validates_against_its_schema(
    kind: Kind, status: Status, amount: int | None, test: bool
) -> None:
    event = build_event(make_callback(kind=kind, amount=amount, test=test), status=status)
    jsonschema.validate(orjson.loads(encode_event(event)), event_schema(event.type))


def test_schema_rejects_a_float_amount() -> None:
    event = build_event(make_callback()).to_dict()
    event["data"]["amount"] = 12.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, event_schema(event["type"]))
