"""Money as integer minor units plus an ISO 4217 currency; never floats.

Providers send amounts three ways: already in minor units (Paysera), as decimal strings in
major units (Paygol, Paysepro, Paypro), or as JSON numbers in major units (PayCore). Every
path ends here, and every path is exact: a value with more decimals than the currency has, or
a currency we do not know, is refused rather than rounded or guessed.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from contracts.errors import InvalidAmount, UnknownCurrency

__all__ = ["CURRENCY_EXPONENTS", "exponent_of", "format_major", "major_to_minor", "parse_minor"]

# ISO 4217 minor-unit exponents of active currencies (funds and metals left out: no provider
# here settles in them). Anything not listed is rejected, so a typo never becomes money.
_BY_EXPONENT: dict[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP "
        "BYN BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
        "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT "
        "LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN "
        "NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
        "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES "
        "WST XCD YER ZAR ZMW ZWL"
    ),
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent for exponent, codes in _BY_EXPONENT.items() for code in codes.split()
}

_DECIMAL = re.compile(r"^[+-]?(\d+)(?:\.(\d+))?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def exponent_of(currency: str) -> int:
    """The number of minor-unit digits of ``currency`` (upper-case ISO 4217 code)."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(currency) from None


def major_to_minor(value: str | int | Decimal, currency: str) -> int:
    """Convert a major-unit amount (``"12.50"``, ``22``, ``Decimal("3.33")``) to minor units.

    Floats are refused on purpose: a JSON number must be parsed as ``Decimal`` first (see
    ``contracts.codec.loads_exact``), so ``0.1`` never turns into ``0.1000000000000000055``.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount(repr(value), currency, "floats and booleans are not money")
    exponent = exponent_of(currency)
    if isinstance(value, int):
        return int(value * 10**exponent)
    text = str(value).strip() if isinstance(value, Decimal) else value.strip()
    match = _DECIMAL.match(text)
    if match is None:
        raise InvalidAmount(str(value), currency, "not a decimal number")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidAmount(str(value), currency, "not a decimal number") from None
    scaled = amount.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(str(value), currency, f"more than {exponent} decimals")
    return int(scaled)


def parse_minor(value: str | int, currency: str) -> int:
    """Parse an amount that is already in minor units (Paysera sends ``1250`` for 12.50 EUR)."""
    exponent_of(currency)  # validates the currency even though no scaling is needed
    if isinstance(value, bool):
        raise InvalidAmount(repr(value), currency, "booleans are not money")
    if isinstance(value, int):
        return value
    text = value.strip()
    if not _INTEGER.match(text):
        raise InvalidAmount(value, currency, "minor units must be an integer")
    return int(text)


def format_major(minor: int, currency: str) -> str:
    """Render minor units as a major-unit decimal string: ``1250, "EUR"`` → ``"12.50"``."""
    exponent = exponent_of(currency)
    if exponent == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"
