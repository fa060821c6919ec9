"""JSON Schema (draft 2020-12) for every event type, so consumers in any language can validate.

The files under ``contracts/schemas/`` are generated from ``event_schema`` by
``python -m payhook.schema_files`` (a test fails if they drift).
"""

from __future__ import annotations

from typing import Any

from contracts.events import CLOUDEVENTS_SPECVERSION, EVENT_TYPES
from contracts.statuses import Status, VerifiedBy

__all__ = ["event_schema", "schema_filename"]

_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_MINOR = {"type": ["integer", "null"], "description": "integer minor units"}
_CURRENCY = {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"}


def schema_filename(event_type: str) -> str:
    return f"{event_type}.schema.json"


def event_schema(event_type: str) -> dict[str, Any]:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    _, kind, status = event_type.split(".")
    data = {
        "type": "object",
        "required": [
            "provider",
            "account",
            "transaction_id",
            "kind",
            "status",
            "provider_status",
            "amount",
            "currency",
            "test",
            "verified_by",
            "received_at",
            "callback_id",
            "raw",
        ],
        "properties": {
            "provider": {"type": "string", "minLength": 1},
            "account": {"type": "string", "minLength": 1},
            "merchant": _NULLABLE_STRING,
            "transaction_id": {"type": "string", "minLength": 1},
            "order_id": _NULLABLE_STRING,
            "kind": {"const": kind},
            "status": {"const": status},
            "provider_status": {"type": "string"},
            "amount": _NULLABLE_MINOR,
            "currency": _CURRENCY,
            "paid_amount": _NULLABLE_MINOR,
            "paid_currency": _CURRENCY,
            "refund_amount": _NULLABLE_MINOR,
            "fee_amount": _NULLABLE_MINOR,
            "fee_currency": _CURRENCY,
            "test": {"type": "boolean"},
            "verified_by": {"enum": [v.value for v in VerifiedBy]},
            "received_at": {"type": "string", "format": "date-time"},
            "callback_id": {"type": "string", "format": "uuid"},
            "details": {"type": "object"},
            "ledger": {
                "type": "object",
                "properties": {
                    "payment_status": {"enum": [s.value for s in Status]},
                    "reason": {"type": "string"},
                },
            },
            "raw": {
                "type": "object",
                "required": ["method", "path", "query", "headers", "remote"],
                "properties": {
                    "method": {"type": "string"},
                    "path": {"type": "string"},
                    "query": {"type": "string"},
                    "body": {"type": "string"},
                    "body_b64": {"type": "string", "contentEncoding": "base64"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "remote": {"type": "string"},
                },
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://payhook.invalid/schemas/{schema_filename(event_type)}",
        "title": event_type,
        "description": f"CloudEvent emitted when a {kind} becomes {status}.",
        "type": "object",
        "required": [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data",
        ],
        "properties": {
            "specversion": {"const": CLOUDEVENTS_SPECVERSION},
            "id": {"type": "string", "format": "uuid"},
            "source": {"type": "string", "pattern": "^/payhook/[^/]+/[^/]+$"},
            "type": {"const": event_type},
            "subject": {"type": "string", "minLength": 1},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "correlationid": {"type": "string"},
            "data": data,
        },
    }
