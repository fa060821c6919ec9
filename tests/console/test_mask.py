"""What pages show of raw callbacks: secrets and payer data masked, the rest intact."""

from __future__ import annotations

import json

import pytest

from contracts.redact import SENSITIVE_KEYS, sensitive_key
from workers.console.mask import MASK, mask_callback, mask_value


@pytest.mark.parametrize(
    "name",
    [
        "ss1", "ss2", "SS3", "X-Signature", "x-pg-sig", "sign", "key", "password", "token",
        "Authorization", "email", "p_email", "payer_email", "customer-email", "name",
        "p_firstname", "p_lastname", "surename", "phone", "payer_phone", "msisdn",
        "p_street", "billing_address", "api_key", "live_key",
    ],
)  # fmt: skip
def test_sensitive_names(name: str) -> None:
    assert sensitive_key(name)


@pytest.mark.parametrize(
    "name",
    ["orderid", "order_id", "amount", "currency", "status", "requestid", "projectid", "test"],
)
def test_ordinary_names(name: str) -> None:
    assert not sensitive_key(name)


def test_the_log_redaction_list_is_covered() -> None:
    assert all(sensitive_key(key) for key in SENSITIVE_KEYS)


def _document(raw: dict[str, object], **fields: object) -> dict[str, object]:
    return {"provider": "paysepro", "transaction_id": "T-1", "order_id": "ORD-9", **fields,
            "raw": raw}  # fmt: skip


def test_query_headers_and_form_bodies_are_masked_field_by_field() -> None:
    shown = mask_callback(
        _document(
            {
                "method": "POST",
                "path": "/callbacks/paysepro/main",
                "query": (
                    "uid=12345&email=payer%40example.com&sign=deadbeef&note=mail+me+at+a%40b.io"
                ),
                "headers": {"X-Signature": "c2lnbmF0dXJl", "Content-Type": "text/plain"},
                "body": "orderid=ORD-9&p_phone=%2B37060000000&amount=1250",
                "remote": "203.0.113.7",
            },
            details={"type": "card", "email": "payer@example.com"},
        )
    )
    assert shown.query == [
        ("uid", "12345"),
        ("email", MASK),
        ("sign", MASK),
        ("note", "mail me at ***@***"),
    ]
    assert shown.headers == [("X-Signature", MASK), ("Content-Type", "text/plain")]
    assert shown.body_kind == "form"
    assert shown.body_fields == [("orderid", "ORD-9"), ("p_phone", MASK), ("amount", "1250")]
    assert shown.fields["details"] == {"type": "card", "email": MASK}
    assert shown.fields["order_id"] == "ORD-9"
    assert shown.remote == "203.0.113.7"


def test_json_bodies_are_walked_into_and_masked() -> None:
    body = {
        "data": {
            "id": "cpi_1",
            "attributes": {"status": "processed", "customer": {"email": "x@y.z", "name": "Jo"}},
        }
    }
    shown = mask_callback(_document({"method": "POST", "path": "/", "body": json.dumps(body)}))
    assert shown.body_kind == "json"
    parsed = json.loads(shown.body_text)
    assert parsed["data"]["id"] == "cpi_1"
    assert parsed["data"]["attributes"]["status"] == "processed"
    assert parsed["data"]["attributes"]["customer"] == {"email": MASK, "name": MASK}


def test_paysera_data_and_free_text_are_not_shown() -> None:
    shown = mask_callback(
        _document(
            {"method": "GET", "path": "/", "query": "data=b3JkZXJpZD0x&ss1=abc&ss2=def", "body": ""}
        )
    )
    assert shown.query == [("data", MASK), ("ss1", MASK), ("ss2", MASK)]
    text = mask_callback(_document({"method": "POST", "path": "/", "body": "Jane Doe +3706"}))
    assert text.body_kind == "text"
    assert "Jane" not in text.body_text
    binary = mask_callback(_document({"method": "POST", "path": "/", "body_b64": "AAEC"}))
    assert binary.body_kind == "binary"
    assert "AAEC" not in binary.body_text


def test_mask_value_masks_urls_and_nested_secrets() -> None:
    assert mask_value({"url": "amqp://u:pw@h/", "token": {"a": 1}}) == {
        "url": "amqp://u:***@h/",
        "token": MASK,
    }


def test_json_numbers_are_shown_as_written() -> None:
    body = '{"data": {"attributes": {"amount": 22.00, "fee": 0.660, "n": 7, "key": 1.5}}}'
    shown = mask_callback(_document({"method": "POST", "path": "/", "body": body}))
    assert '"amount": 22.00' in shown.body_text
    assert '"fee": 0.660' in shown.body_text
    assert '"n": 7' in shown.body_text
    assert '"key": "[masked]"' in shown.body_text
    assert json.loads(shown.body_text)["data"]["attributes"]["amount"] == 22.0
