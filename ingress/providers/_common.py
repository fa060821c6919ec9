"""Helpers every provider module shares: bounded parsing, constant-time checks, money, options.

Everything here turns bad input into ``Rejected`` and never into another exception: a provider
module is called on bytes anyone on the internet can send.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from contracts.config import ProviderAccount, Secret
from contracts.errors import ConfigError, InvalidAmount, UnknownCurrency
from contracts.money import major_to_minor, parse_minor
from ingress.providers.base import Rejected

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_FIELDS",
    "MAX_JSON_DEPTH",
    "any_secret_matches",
    "config_error",
    "decimal_text",
    "load_json",
    "major_amount",
    "minor_amount",
    "opt_bool",
    "opt_str",
    "opt_str_list",
    "parse_form",
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

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


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
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:  # includes UnicodeDecodeError from a bad %-escape
        raise Rejected(400, f"{what} is malformed") from None
    return dict(pairs)


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
    and nesting depth, refusing duplicate keys, NaN and Infinity."""
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
        return json.loads(
            text,
            parse_float=Decimal,
            parse_constant=_no_constants,
            object_pairs_hook=_reject_duplicates,
        )
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise Rejected(400, "body is not valid JSON") from None


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
    """A number as plain decimal text: ``Decimal("1E+2")`` → ``"100"``, never exponent form."""
    if isinstance(value, int):
        return str(value)
    if not value.is_finite():
        raise Rejected(400, "amount is not a finite number")
    return format(value, "f")


def _money(convert: Any, value: str | int | Decimal, currency: str) -> int:
    if isinstance(value, Decimal):
        value = decimal_text(value)
    try:
        return int(convert(value, currency))
    except UnknownCurrency:
        raise Rejected(422, "unknown currency", currency=currency[:8]) from None
    except InvalidAmount:
        raise Rejected(400, "invalid amount") from None


def major_amount(value: str | int | Decimal, currency: str) -> int:
    """Major units (``"12.50"``) → minor units; 422 for an unknown currency, 400 if inexact."""
    if isinstance(value, str) and len(value) > 32:
        raise Rejected(400, "invalid amount")
    return _money(major_to_minor, value, currency)


def minor_amount(value: str | int, currency: str) -> int:
    """Already minor units (Paysera's ``1250``); the currency is still checked."""
    if isinstance(value, str) and len(value) > 32:
        raise Rejected(400, "invalid amount")
    return _money(parse_minor, value, currency)


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
