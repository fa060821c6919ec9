"""The helpers every provider module shares (``ingress.providers._common``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ingress.providers._common import (
    MAX_FIELDS,
    _form_fields,
    amount_and_currency,
    amount_field,
    decimal_text,
    details_of,
    header,
    load_json,
    major_amount,
    minor_amount,
    parse_form,
    plain_length,
    text_field,
)
from ingress.providers.base import Rejected


def refusal(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(Rejected) as caught:
        call(*args, **kwargs)
    return caught.value.status, caught.value.reason


@given(
    st.decimals(allow_nan=False, allow_infinity=False)
    | st.builds(
        Decimal, st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{0,30})?(E[+-]?[0-9]{1,3})?", fullmatch=True)
    )
)
@example(Decimal("0E+1"))  # found by hypothesis: zero writes "0" whatever its exponent
@example(Decimal("-0E+5"))
def test_plain_length_is_what_format_writes(value: Decimal) -> None:
    assert plain_length(value) == len(format(value, "f"))


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (Decimal("1e999999999"), "price", "price is too long"),  # never written out
        (Decimal("1e-999999999"), "price", "price is too long"),
        (Decimal("1" * 40), "price", "price is too long"),
    ],
)
def test_text_field_bounds_numbers_before_writing_them(
    value: Decimal, key: str, reason: str
) -> None:
    assert refusal(text_field, {key: value}, key, max_len=32) == (400, reason)


def test_decimal_text() -> None:
    assert decimal_text(Decimal("1E+2")) == "100"
    assert decimal_text(Decimal("0.05")) == "0.05"
    assert refusal(decimal_text, Decimal("1e999999999")) == (400, "number is too long")


@pytest.mark.parametrize(
    ("convert", "value", "zero_ok", "reason"),
    [
        (major_amount, "92233720368547758.08", False, "amount out of range"),
        (major_amount, Decimal("1e400"), False, "amount out of range"),
        (major_amount, 10**30, False, "amount out of range"),
        (major_amount, "-0.01", False, "amount must be positive"),
        (major_amount, "0", False, "amount must be positive"),
        (major_amount, "-0.01", True, "amount must not be negative"),
        (major_amount, "12.505", False, "invalid amount"),  # as before: inexact or garbage
        (major_amount, "ten", False, "invalid amount"),
        (major_amount, "1" * 33, False, "amount is too long"),
        (minor_amount, "9223372036854775808", False, "amount out of range"),
        (minor_amount, "-1", True, "amount must not be negative"),
        (minor_amount, "12.50", False, "invalid amount"),
    ],
)
def test_amount_refusals_say_what_is_wrong(
    convert: Any, value: Any, zero_ok: bool, reason: str
) -> None:
    assert refusal(convert, value, "EUR", zero_ok=zero_ok) == (400, reason)


def test_amount_zero_where_allowed_and_unknown_currency() -> None:
    assert major_amount("0.00", "EUR", zero_ok=True) == 0
    assert minor_amount("0", "EUR", zero_ok=True) == 0
    assert major_amount("92233720368547758.07", "EUR") == 2**63 - 1
    assert refusal(major_amount, "1.00", "ZZZ") == (422, "unknown currency")


def test_amount_field_and_currency() -> None:
    fields = {"price": "10.00", "currency": "EUR", "fee": Decimal("0.5"), "bad": True}
    assert amount_and_currency(fields, "price", "currency") == (1000, "EUR")
    assert amount_and_currency({"currency": "EUR"}, "price", "currency") == (None, "EUR")
    assert amount_and_currency({"price": ""}, "price", "currency") == (None, None)
    assert amount_field(fields, "fee", "EUR") == 50  # a JSON number, never through text
    assert refusal(amount_and_currency, {"price": "1"}, "price", "currency") == (
        400,
        "price without currency",
    )
    assert refusal(amount_field, fields, "bad", "EUR") == (400, "bad is not a number")
    assert refusal(amount_field, {"amount": Decimal("12")}, "amount", "EUR", minor=True) == (
        400,
        "invalid amount",
    )


def test_header_and_details() -> None:
    assert header({"x-pg-sig": "abc"}, "X-Pg-Sig") == "abc"
    assert header({}, "X-Pg-Sig") is None
    fields = {"a": "x" * 300, "b": "", "c": 5, "d": "kept"}
    assert details_of(fields, ("a", "b", "c", "d", "missing")) == {"a": "x" * 200, "d": "kept"}


@pytest.mark.parametrize(
    "body", [b'{"a":"\\ud800"}', b'{"\\udfff":1}', b'{"a":["ok","\\uDC00x"]}', b'"\\ud83d"']
)
def test_load_json_refuses_lone_surrogates(body: bytes) -> None:
    """Valid JSON, but no text: orjson could not write it to the broker."""
    assert refusal(load_json, body) == (400, "body holds a lone surrogate escape")


def test_load_json_keeps_surrogate_pairs_and_escapes() -> None:
    assert load_json(b'{"a":"\\ud83d\\ude00","b":"\\u00e9\\\\ud800"}') == {
        "a": "\U0001f600",
        "b": "\u00e9\\ud800",  # an escaped backslash, not an escape
    }


# --- form parsing: the same fields as urllib's parse_qsl ----------------------------------------

_FORM_ALPHABET = st.sampled_from([*"ab=&+%;2B3dFfGz0 é\u2603", "%C3%A9", "%e2%98%83", "%FF", "%"])


def _parse_qsl_fields(text: str) -> dict[str, str] | type[ValueError]:
    try:
        return dict(
            parse_qsl(
                text,
                keep_blank_values=True,
                encoding="utf-8",
                errors="strict",
                max_num_fields=MAX_FIELDS,
            )
        )
    except ValueError:
        return ValueError


@given(st.lists(_FORM_ALPHABET, max_size=40).map("".join))
@example("a=1&a=2&b")  # the last duplicate wins; a bare name is a blank value
@example("&&=x&y=&%41%2B+b=c+%2B")  # empty pairs, an empty name, %-escapes after "+"
@example("bad=%C3")  # a truncated UTF-8 escape is a ValueError, as in parse_qsl
def test_form_fields_are_what_parse_qsl_reads(text: str) -> None:
    try:
        ours: dict[str, str] | type[ValueError] = _form_fields(text)
    except ValueError:
        ours = ValueError
    assert ours == _parse_qsl_fields(text)


def test_the_field_limit_is_parse_qsls() -> None:
    at_limit = "&".join(f"f{i}=v" for i in range(MAX_FIELDS))
    reference = _parse_qsl_fields(at_limit)
    assert isinstance(reference, dict)
    assert len(_form_fields(at_limit)) == MAX_FIELDS == len(reference)
    with pytest.raises(Rejected) as refused:
        parse_form(at_limit + "&one=more")
    assert refused.value.status == 400
    assert refused.value.reason == "query is malformed"
