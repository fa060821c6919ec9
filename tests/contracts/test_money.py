from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.errors import InvalidAmount, UnknownCurrency
from contracts.money import CURRENCY_EXPONENTS, format_major, major_to_minor, parse_minor


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
