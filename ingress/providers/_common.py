"""Helpers every provider module shares: bounded parsing, constant-time checks, money, options.

Everything here turns bad input into ``Rejected`` and never into another exception: a provider
module is called on bytes anyone on the internet can send.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import unquote

from contracts.config import ProviderAccount, Secret
from contracts.errors import ConfigError, InvalidAmount, UnknownCurrency
from contracts.money import (
    MUST_BE_POSITIVE,
    MUST_NOT_BE_NEGATIVE,
    OUT_OF_RANGE,
    check_sign,
    major_to_minor,
    parse_minor,
)
from ingress.providers.base import Rejected

__all__ = [
    "MAX_AMOUNT_TEXT",
    "MAX_BODY_BYTES",
    "MAX_FIELDS",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_TEXT",
    "amount_and_currency",
    "amount_field",
    "any_secret_matches",
    "config_error",
    "decimal_text",
    "details_of",
    "header",
    "load_json",
    "major_amount",
    "minor_amount",
    "opt_bool",
    "opt_str",
    "opt_str_list",
    "parse_form",
    "plain_length",
    "request_params",
    "require_secret",
    "required_text",
    "secrets_of",
    "text_field",
]

# Genuine callbacks are a few hundred bytes; these bounds only stop abuse early.
MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 200
MAX_JSON_DEPTH = 16
# No amount needs more characters than this (MINOR_MAX has 19 digits); longer text is refused
# before it is parsed. Plain-text numbers elsewhere are bounded by MAX_NUMBER_TEXT.
MAX_AMOUNT_TEXT = 32
MAX_NUMBER_TEXT = 64

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_form(text: str | bytes, what: str = "query") -> dict[str, str]:
    """Parse ``a=1&b=2`` like PHP ``parse_str`` does for flat keys: ``+`` is a space, the last
    duplicate wins. Non-UTF-8 escapes and absurd field counts are refused."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(400, f"{what} is not UTF-8") from None
    if not text:
        return {}
    try:
        return _form_fields(text)
    except ValueError:  # includes UnicodeDecodeError from a bad %-escape
        raise Rejected(400, f"{what} is malformed") from None


def _form_fields(text: str) -> dict[str, str]:
    """``dict(parse_qsl(text, keep_blank_values=True, errors="strict",
    max_num_fields=MAX_FIELDS))``, the same result and the same ``ValueError`` (a property test
    holds them equal), at about half the cost: ``parse_qsl`` re-checks its arguments' types
    and builds a list of pairs first, and ``unquote`` is called only where a field has a ``%``.
    """
    if text.count("&") >= MAX_FIELDS:  # parse_qsl's own rule: 1 + the separators
        raise ValueError("Max number of fields exceeded")
    fields: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name, errors="strict")
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value, errors="strict")
        fields[name] = value
    return fields


def request_params(query_string: str, body: bytes) -> dict[str, str]:
    """GET query and POST form merged, the body winning like PHP's ``$_REQUEST`` does."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(413, "request body too large")
    params = parse_form(query_string)
    if body.strip():
        params.update(parse_form(body, "form body"))
    return params


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two readers of one body must never see two different documents.
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def load_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a JSON body with numbers as ``Decimal``/``int`` (never float), bounded in size
    and nesting depth, refusing duplicate keys, NaN, Infinity and lone surrogates."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(413, "request body too large")
    # Depth is measured before parsing so that deep nesting cannot exhaust the stack.
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b'""', body)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > max_depth:
            raise Rejected(400, "JSON body nested too deeply")
    try:
        text = body.decode("utf-8")
        document = json.loads(
            text,
            parse_float=Decimal,
            parse_constant=_no_constants,
            object_pairs_hook=_reject_duplicates,
        )
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise Rejected(400, "body is not valid JSON") from None
    # "\ud800" is valid JSON but no character: such a string could be read and signed, and
    # then not be written to the broker (orjson refuses it), so it is refused here.
    if "\\u" in text and not _valid_unicode(document):
        raise Rejected(400, "body holds a lone surrogate escape")
    return document


def _valid_unicode(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is None
    if isinstance(value, dict):
        return all(_valid_unicode(k) and _valid_unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_valid_unicode(v) for v in value)
    return True


def any_secret_matches(expected: Iterable[bytes], received: bytes) -> bool:
    """Constant-time comparison against every candidate (rotation: any one may match).

    All candidates are compared, so timing does not reveal which secret (if any) matched.
    """
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(candidate, received)
    return matched


def text_field(
    params: Mapping[str, Any], key: str, *, required: bool = True, max_len: int = 256
) -> str | None:
    """A scalar field as text; ``Rejected(400)`` if missing (when required) or not a scalar."""
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise Rejected(400, f"missing {key}")
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Decimal) and plain_length(value) > max_len:
        raise Rejected(400, f"{key} is too long")  # decided before writing it out
    elif isinstance(value, int | Decimal):
        text = decimal_text(value)
    else:
        raise Rejected(400, f"{key} is not a scalar")
    if len(text) > max_len:
        raise Rejected(400, f"{key} is too long")
    return text


def required_text(params: Mapping[str, Any], key: str, *, max_len: int = 256) -> str:
    """Like ``text_field`` for a field that must be present."""
    text = text_field(params, key, max_len=max_len)
    if text is None:  # pragma: no cover - text_field already refused it
        raise Rejected(400, f"missing {key}")
    return text


def decimal_text(value: int | Decimal) -> str:
    """A number as plain decimal text: ``Decimal("1E+2")`` → ``"100"``, never exponent form.

    Refused (400) when that text would be longer than ``MAX_NUMBER_TEXT``: ``1e999999999``
    is a few bytes on the wire and a gigabyte written out.
    """
    if isinstance(value, int):
        return str(value)  # json.loads already refused integers of more than 4300 digits
    if not value.is_finite():
        raise Rejected(400, "amount is not a finite number")
    if plain_length(value) > MAX_NUMBER_TEXT:
        raise Rejected(400, "number is too long")
    return format(value, "f")


def plain_length(value: Decimal) -> int:
    """How many characters ``format(value, "f")`` would write, computed without writing it."""
    _sign, digits, power = value.as_tuple()
    if not isinstance(power, int):  # NaN, Infinity: short
        return len(str(value))
    sign = 1 if value.is_signed() else 0
    if power >= 0:
        if not any(digits):  # zero: "0E+1" is written "0", whatever the exponent
            return sign + 1
        return sign + len(digits) + power
    whole = max(len(digits) + power, 1)  # "0.05" still writes its leading zero
    return sign + whole + 1 + -power


_SAYABLE = frozenset({OUT_OF_RANGE, MUST_BE_POSITIVE, MUST_NOT_BE_NEGATIVE})


def _money(
    convert: Callable[[Any, str], int],
    value: str | int | Decimal,
    currency: str,
    field: str,
    zero_ok: bool,
) -> int:
    if isinstance(value, str) and len(value) > MAX_AMOUNT_TEXT:
        raise Rejected(400, f"{field} is too long")
    try:
        return check_sign(convert(value, currency), currency, zero_ok=zero_ok)
    except UnknownCurrency:
        raise Rejected(422, "unknown currency", currency=currency[:8]) from None
    except InvalidAmount as exc:
        # Range and sign say what is wrong with a well-formed number; anything else is one
        # answer, as before ("12.505 EUR", "ten").
        reason = f"{field} {exc.reason}" if exc.reason in _SAYABLE else "invalid amount"
        raise Rejected(400, reason) from None


def major_amount(
    value: str | int | Decimal, currency: str, *, field: str = "amount", zero_ok: bool = False
) -> int:
    """Major units (``"12.50"``) → minor units; 422 for an unknown currency, 400 if inexact,
    outside the ledger's 64-bit range, negative, or zero (unless ``zero_ok``)."""
    return _money(major_to_minor, value, currency, field, zero_ok)


def minor_amount(
    value: str | int, currency: str, *, field: str = "amount", zero_ok: bool = False
) -> int:
    """Already minor units (Paysera's ``1250``); the currency, range and sign are still checked."""
    return _money(parse_minor, value, currency, field, zero_ok)


def amount_field(
    fields: Mapping[str, Any],
    key: str,
    currency: str | None,
    *,
    currency_key: str = "currency",
    minor: bool = False,
    zero_ok: bool = False,
) -> int | None:
    """The amount under ``key`` in ``currency``; ``None`` when absent (missing or empty).

    JSON numbers (``int``/``Decimal``) go to the conversion as they are, never through text,
    so ``1e400`` is "out of range" rather than four hundred digits.
    """
    value = fields.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise Rejected(400, f"{key} is not a number")
    if currency is None:
        raise Rejected(400, f"{key} without {currency_key}")
    if minor:
        if isinstance(value, Decimal):
            raise Rejected(400, "invalid amount")  # minor units are integers
        return minor_amount(value, currency, field=key, zero_ok=zero_ok)
    return major_amount(value, currency, field=key, zero_ok=zero_ok)


def amount_and_currency(
    fields: Mapping[str, Any],
    amount_key: str,
    currency_key: str,
    *,
    minor: bool = False,
    zero_ok: bool = False,
) -> tuple[int | None, str | None]:
    """An amount and the currency field beside it: ``(None, currency)`` without an amount,
    400 for an amount without its currency."""
    currency = text_field(fields, currency_key, required=False, max_len=8)
    amount = amount_field(
        fields, amount_key, currency, currency_key=currency_key, minor=minor, zero_ok=zero_ok
    )
    return amount, currency


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header by name, case-insensitively (``RawRequest`` keeps the sender's case)."""
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def details_of(
    fields: Mapping[str, Any], keys: Iterable[str], max_len: int = 200
) -> dict[str, Any]:
    """The non-empty text fields among ``keys``, each cut to ``max_len``, for an event's details."""
    out: dict[str, Any] = {}
    for key in keys:
        value = fields.get(key)
        if isinstance(value, str) and value:
            out[key] = value[:max_len]
    return out


# --- account options -------------------------------------------------------------------


def config_error(account: ProviderAccount, key: str, problem: str) -> ConfigError:
    return ConfigError(f"providers.{account.provider}.{account.name}.{key} {problem}")


def opt_str(account: ProviderAccount, key: str, *, required: bool = False) -> str | None:
    value = account.options.get(key)
    if value is None:
        if required:
            raise config_error(account, key, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise config_error(account, key, "must be a string")
    text = str(value)
    if not text:
        raise config_error(account, key, "must not be empty")
    return text


def opt_bool(account: ProviderAccount, key: str, default: bool = False) -> bool:
    value = account.options.get(key, default)
    if not isinstance(value, bool):
        raise config_error(account, key, "must be true or false")
    return value


def opt_str_list(account: ProviderAccount, key: str) -> tuple[str, ...]:
    value = account.options.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise config_error(account, key, "must be a list of strings")
    return tuple(value)


def secrets_of(account: ProviderAccount, key: str) -> tuple[Secret, ...]:
    """The account's secrets under ``key`` (empty when not configured)."""
    return tuple(account.secrets.get(key, ()))


def require_secret(account: ProviderAccount, key: str) -> None:
    if key in account.options:
        raise config_error(account, key, 'must be a secret reference ("env:NAME" or "file:PATH")')
    if not secrets_of(account, key):
        raise config_error(account, key, 'is required ("env:NAME" or "file:PATH", or a list)')
