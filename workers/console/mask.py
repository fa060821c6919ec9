"""Callback documents for people: secrets and payer data masked before a page shows them.

A recorded callback (``callbacks.body``) holds the provider's raw request, which may carry
signatures (``ss1``, ``X-Signature``), shared secrets and the payer's name, e-mail address and
phone number. Every page shows it through ``mask_callback``:

- a field whose name is sensitive (``contracts.redact.sensitive_key``) shows ``[masked]``,
  whatever its value; containers under the generic names ``data``/``body``/``raw``/``query``
  are walked into rather than hidden (PayCore's whole JSON body sits under ``data``), but a
  plain value under them is masked (Paysera's encoded ``data`` holds the payer's fields);
- the raw query string and body are parsed (form-encoded or JSON) and masked field by field;
  a body that is neither is not shown (free text could hold anything), only its size;
- e-mail addresses and URL passwords are masked in every remaining string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from contracts.redact import mask_emails, mask_urls, sensitive_key

__all__ = [
    "MASK",
    "MaskedCallback",
    "Number",
    "mask_callback",
    "mask_text",
    "mask_value",
    "render_json",
]

MASK = "[masked]"
_WALK_INTO = frozenset({"data", "body", "raw", "query"})
_TEXT_LIMIT = 4096


class Number(str):
    """A JSON number exactly as the provider wrote it (``22.00`` stays ``22.00``)."""


def mask_text(text: str) -> str:
    return mask_urls(mask_emails(text))


def mask_value(value: Any, key: str | None = None) -> Any:
    """``value`` with every sensitive field masked (``key``: the name it is stored under)."""
    if key is not None and sensitive_key(key):
        name = key.strip().lower()
        if not (name in _WALK_INTO and isinstance(value, dict | list)):
            return MASK
    if isinstance(value, dict):
        return {k: mask_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    if isinstance(value, Number):
        return value
    if isinstance(value, str):
        return mask_text(value)
    return value


@dataclass(frozen=True, slots=True)
class MaskedCallback:
    """What a page shows of one callback: fields, and the raw request, all masked."""

    fields: dict[str, Any]  # the normalized reading (raw left out)
    method: str = ""
    path: str = ""
    remote: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)
    body_kind: str = "empty"  # empty | form | json | text | binary
    body_fields: list[tuple[str, str]] = field(default_factory=list)  # form
    body_text: str = ""  # json (indented) or text


def _numbers_as_written(text: str) -> Any:
    return json.loads(text, parse_float=Number, parse_int=Number)


def render_json(value: Any, indent: str = "") -> str:
    """Indented JSON; ``Number`` values verbatim, so amounts read as the provider sent them."""
    inner = indent + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {render_json(v, inner)}"
                 for k, v in value.items()]  # fmt: skip
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [inner + render_json(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    if isinstance(value, Number):
        return str.__str__(value)
    return json.dumps(value, ensure_ascii=False)


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(k, MASK if sensitive_key(k) else mask_text(v)) for k, v in _parse_form(text)]


def _parse_form(text: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return []


def mask_callback(body: Mapping[str, Any]) -> MaskedCallback:
    """The recorded ``CallbackReceived`` document ``body``, ready for a page."""
    fields = {k: mask_value(v, k) for k, v in body.items() if k != "raw"}
    raw = body.get("raw")
    if not isinstance(raw, Mapping):
        return MaskedCallback(fields)
    headers = [
        (str(k), MASK if sensitive_key(str(k)) else mask_text(str(v)))
        for k, v in dict(raw.get("headers") or {}).items()
    ]
    query_text = str(raw.get("query") or "")
    query = _pairs(query_text) if query_text else []
    if query_text and not query:
        query = [("(unparsed)", mask_text(query_text[:_TEXT_LIMIT]))]
    kind, body_fields, body_text = _body(raw)
    return MaskedCallback(
        fields=fields,
        method=str(raw.get("method", "")),
        path=str(raw.get("path", "")),
        remote=str(raw.get("remote", "")),
        headers=headers,
        query=query,
        body_kind=kind,
        body_fields=body_fields,
        body_text=body_text,
    )


def _body(raw: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]], str]:
    if "body_b64" in raw:
        return "binary", [], f"({len(str(raw['body_b64'])) * 3 // 4} bytes, not shown)"
    text = str(raw.get("body") or "")
    if not text.strip():
        return "empty", [], ""
    try:
        document = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(document, dict | list):
            shown = render_json(mask_value(_numbers_as_written(text)))
            return "json", [], shown[: _TEXT_LIMIT * 4]
    form = _parse_form(text.strip())
    if form:
        return "form", _pairs(text.strip()), ""
    # Free text could hold anything (a name, a phone number): its size only.
    return "text", [], f"({len(text)} characters, neither a form nor JSON: not shown)"
