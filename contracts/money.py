"""Money as integer minor units plus an ISO 4217 currency; never floats.

Providers send amounts three ways: already in minor units (Paysera), as decimal strings in
major units (Paygol, Paysepro, Paypro), or as JSON numbers in major units (PayCore). Every
path ends here, and every path is exact: a value with more decimals than the currency has, or
a currency we do not know, is refused rather than rounded or guessed.

Range: every minor-unit amount must fit in a signed 64-bit integer, because that is what the
ledger stores (``bigint``) and what the message codec (orjson) can write; a larger one is
refused here, at the edge, instead of failing later on its way to the broker. Whether zero or a
negative amount makes sense depends on the field and the provider, so the conversions accept
any sign and ``check_sign`` states the rule where the caller knows it.
"""

from __future__ import annotations

import re
from decimal import Decimal

from contracts.errors import InvalidAmount, UnknownCurrency

__all__ = [
    "CURRENCY_EXPONENTS",
    "MINOR_MAX",
    "MINOR_MIN",
    "MUST_BE_POSITIVE",
    "MUST_NOT_BE_NEGATIVE",
    "OUT_OF_RANGE",
    "check_range",
    "check_sign",
    "exponent_of",
    "format_major",
    "major_to_minor",
    "parse_minor",
]

# The ledger's bigint, which is also the widest integer orjson encodes.
MINOR_MIN = -(2**63)
MINOR_MAX = 2**63 - 1
# ``InvalidAmount.reason`` of the range and sign checks: stable texts callers may show.
OUT_OF_RANGE = "out of range"
MUST_BE_POSITIVE = "must be positive"
MUST_NOT_BE_NEGATIVE = "must not be negative"
# Decimal digits of MINOR_MAX: a value whose minor units need more cannot be in range.
_MAX_DIGITS = len(str(MINOR_MAX))

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
    The result is exact and within ``MINOR_MIN..MINOR_MAX``, else ``InvalidAmount``.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount(repr(value), currency, "floats and booleans are not money")
    exponent = exponent_of(currency)
    if isinstance(value, int):
        return check_range(value * 10**exponent, currency, value)
    if isinstance(value, Decimal):
        amount = value
    else:
        text = value.strip()
        if _DECIMAL.match(text) is None:
            raise InvalidAmount(_shown(value), currency, "not a decimal number")
        amount = Decimal(text)  # the pattern admits nothing Decimal() refuses
    if not amount.is_finite():
        raise InvalidAmount(_shown(value), currency, "not a finite number")
    return check_range(_scaled(amount, exponent, value, currency), currency, value)


def _scaled(amount: Decimal, exponent: int, value: object, currency: str) -> int:
    """``amount`` times ``10**exponent`` as an exact integer, in integer arithmetic only.

    ``Decimal.scaleb`` would round to the context's 28 digits (so a 30-digit amount with a
    stray last decimal passed as whole), and a huge exponent (``1e999999999``) or thousands of
    digits would make huge numbers; here the digits and the exponent decide before any
    arithmetic, which then never handles more than 19 digits.
    """
    sign, digits, power = amount.as_tuple()
    assert isinstance(power, int)  # finite, checked by the caller
    kept = len(digits)
    while kept and digits[kept - 1] == 0:  # trailing zeros: "12.50" is 125 x 10**-1
        kept -= 1
    if kept == 0:
        return 0
    shift = power + (len(digits) - kept) + exponent
    if shift < 0:  # the last digit kept is not zero and lies beyond the minor unit
        raise InvalidAmount(_shown(value), currency, f"more than {exponent} decimals")
    if kept + shift > _MAX_DIGITS:  # the minor units would have more digits than MINOR_MAX
        raise InvalidAmount(_shown(value), currency, OUT_OF_RANGE)
    minor: int = int("".join(map(str, digits[:kept]))) * 10**shift
    return -minor if sign else minor


def parse_minor(value: str | int, currency: str) -> int:
    """Parse an amount that is already in minor units (Paysera sends ``1250`` for 12.50 EUR)."""
    exponent_of(currency)  # validates the currency even though no scaling is needed
    if isinstance(value, bool):
        raise InvalidAmount(repr(value), currency, "booleans are not money")
    if isinstance(value, int):
        return check_range(value, currency, value)
    text = value.strip()
    if not _INTEGER.match(text):
        raise InvalidAmount(_shown(value), currency, "minor units must be an integer")
    if len(text.lstrip("+-").lstrip("0")) > _MAX_DIGITS:
        raise InvalidAmount(_shown(value), currency, OUT_OF_RANGE)  # before int() parses it
    return check_range(int(text), currency, value)


def check_range(minor: int, currency: str, value: object = None) -> int:
    """``minor`` if it fits the ledger's signed 64-bit integer, else ``InvalidAmount``."""
    if not MINOR_MIN <= minor <= MINOR_MAX:
        raise InvalidAmount(_shown(minor if value is None else value), currency, OUT_OF_RANGE)
    return minor


def check_sign(minor: int, currency: str, *, zero_ok: bool = False) -> int:
    """``minor`` if it is positive (or zero, when ``zero_ok``), else ``InvalidAmount``.

    No provider here sends a signed amount: refunds and fees arrive in fields of their own as
    positive numbers, so a negative amount is never money we understand. Zero is a caller's
    decision: a payment of nothing is not a payment, but a fee or a "processed so far" total
    may well be zero.
    """
    if minor < 0 or (minor == 0 and not zero_ok):
        raise InvalidAmount(
            str(minor), currency, MUST_NOT_BE_NEGATIVE if zero_ok else MUST_BE_POSITIVE
        )
    return minor


def _shown(value: object) -> str:
    """A value as it may appear in an error message: short, whatever was sent."""
    if isinstance(value, int) and value.bit_length() > 256:  # str() refuses > 4300 digits
        digits = value.bit_length() * 30103 // 100000 + 1  # log10(2) = 0.30103
        return f"{'-' if value < 0 else ''}<an integer of about {digits} digits>"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_major(minor: int, currency: str) -> str:
    """Render minor units as a major-unit decimal string: ``1250, "EUR"`` → ``"12.50"``."""
    exponent = exponent_of(currency)
    if exponent == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"
