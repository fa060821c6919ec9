from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.errors import InvalidAmount, UnknownCurrency
from contracts.money import (
    CURRENCY_EXPONENTS,
    MINOR_MAX,
    MINOR_MIN,
    MUST_BE_POSITIVE,
    MUST_NOT_BE_NEGATIVE,
    OUT_OF_RANGE,
    check_range,
    check_sign,
    format_major,
    major_to_minor,
    parse_minor,
)


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [
        ("12.50", "EUR", 1250),
        ("10.00", "USD", 1000),
        ("10", "USD", 1000),
        (22, "USD", 2200),
        (Decimal("3.33"), "USD", 333),
        ("500", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("0.1", "EUR", 10),
        ("-5.25", "EUR", -525),
    ],
)
def test_major_to_minor_is_exact(value: str, currency: str, minor: int) -> None:
    assert major_to_minor(value, currency) == minor


@pytest.mark.parametrize(
    ("value", "currency"),
    [("12.505", "EUR"), ("1.5", "JPY"), ("abc", "EUR"), ("1e3", "EUR"), ("", "EUR"), (" ", "EUR")],
)
def test_major_to_minor_refuses_inexact_or_garbage(value: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        major_to_minor(value, currency)


def test_floats_are_never_money() -> None:
    with pytest.raises(InvalidAmount):
        major_to_minor(12.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        major_to_minor(True, "EUR")  # type: ignore[arg-type]


def test_unknown_currency_is_refused() -> None:
    with pytest.raises(UnknownCurrency):
        major_to_minor("1.00", "XYZ")
    with pytest.raises(UnknownCurrency):
        parse_minor("100", "eur")


def test_parse_minor_takes_integers_only() -> None:
    assert parse_minor("1250", "EUR") == 1250
    with pytest.raises(InvalidAmount):
        parse_minor("12.50", "EUR")


@given(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_format_and_parse_round_trip(minor: int, currency: str) -> None:
    assert major_to_minor(format_major(minor, currency), currency) == minor


# --- range and sign (the ledger stores bigint) ---------------------------------------------


def _refusal(convert: object, value: object, currency: str = "EUR") -> InvalidAmount:
    with pytest.raises(InvalidAmount) as caught:
        convert(value, currency)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize(
    ("value", "minor"),
    [
        (str(MINOR_MAX), MINOR_MAX),
        (str(MINOR_MIN), MINOR_MIN),
        (MINOR_MAX, MINOR_MAX),
        (MINOR_MIN, MINOR_MIN),
        ("+0009223372036854775807", MINOR_MAX),  # leading zeros are not digits of the value
    ],
)
def test_parse_minor_accepts_the_64_bit_bounds(value: str | int, minor: int) -> None:
    assert parse_minor(value, "EUR") == minor


@pytest.mark.parametrize(
    "value",
    [
        str(MINOR_MAX + 1),
        str(MINOR_MIN - 1),
        MINOR_MAX + 1,
        MINOR_MIN - 1,
        "9" * 30,
        pytest.param(10**5000, id="5000-digit-int"),
    ],
)
def test_parse_minor_refuses_what_does_not_fit_64_bits(value: str | int) -> None:
    exc = _refusal(parse_minor, value)
    assert exc.reason == OUT_OF_RANGE
    assert len(str(exc)) < 120  # a 5000-digit value is not repeated in the message


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [
        ("92233720368547758.07", "EUR", MINOR_MAX),
        ("-92233720368547758.08", "EUR", MINOR_MIN),
        ("9223372036854775807", "JPY", MINOR_MAX),
        (92233720368547758, "EUR", 9223372036854775800),
        (Decimal("1E+16"), "EUR", 10**18),  # exponent form, as json.loads may hand it over
        (Decimal("1." + "0" * 5000), "EUR", 100),  # trailing zeros are not decimals
        (Decimal("0E+999999999"), "EUR", 0),
    ],
)
def test_major_to_minor_reaches_the_64_bit_bounds(
    value: str | int | Decimal, currency: str, minor: int
) -> None:
    assert major_to_minor(value, currency) == minor


@pytest.mark.parametrize(
    ("value", "currency"),
    [
        ("92233720368547758.08", "EUR"),
        ("-92233720368547758.09", "EUR"),
        ("9223372036854775808", "JPY"),
        ("9223372036854775.808", "KWD"),
        (92233720368547759, "EUR"),
        (10**30, "USD"),  # a 30-digit JSON number
        (-(10**30), "USD"),
        (Decimal("1e400"), "USD"),
        (Decimal("-1e400"), "USD"),
        (Decimal("1e999999999"), "USD"),  # decided from the exponent: no huge number is made
        (Decimal("123456789012345678901234567890"), "USD"),
    ],
)
def test_major_to_minor_refuses_what_does_not_fit_64_bits(
    value: str | int | Decimal, currency: str
) -> None:
    assert _refusal(major_to_minor, value, currency).reason == OUT_OF_RANGE


def test_major_to_minor_is_exact_beyond_decimal_precision() -> None:
    """``Decimal.scaleb`` rounds to 28 digits, which once took this for exactly 1.00."""
    assert _refusal(major_to_minor, "1.000000000000000000000000000001").reason == (
        "more than 2 decimals"
    )
    assert _refusal(major_to_minor, Decimal("1E-999999999")).reason == "more than 2 decimals"
    assert _refusal(major_to_minor, Decimal("NaN")).reason == "not a finite number"


def test_check_range() -> None:
    assert check_range(MINOR_MAX, "EUR") == MINOR_MAX
    assert check_range(MINOR_MIN, "EUR") == MINOR_MIN
    for outside in (MINOR_MAX + 1, MINOR_MIN - 1):
        with pytest.raises(InvalidAmount, match="out of range") as caught:
            check_range(outside, "EUR")
        assert caught.value.reason == OUT_OF_RANGE


@pytest.mark.parametrize(
    ("minor", "zero_ok", "reason"),
    [
        (1, False, None),
        (MINOR_MAX, False, None),
        (0, True, None),
        (0, False, MUST_BE_POSITIVE),
        (-1, False, MUST_BE_POSITIVE),
        (-1, True, MUST_NOT_BE_NEGATIVE),
        (MINOR_MIN, True, MUST_NOT_BE_NEGATIVE),
    ],
)
def test_check_sign(minor: int, zero_ok: bool, reason: str | None) -> None:
    if reason is None:
        assert check_sign(minor, "EUR", zero_ok=zero_ok) == minor
    else:
        with pytest.raises(InvalidAmount) as caught:
            check_sign(minor, "EUR", zero_ok=zero_ok)
        assert caught.value.reason == reason
