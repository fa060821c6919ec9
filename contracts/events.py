"""CloudEvents 1.0 (structured JSON) for downstream services and merchants.

One event per accepted provider transition, plus the ledger's own verdicts (``amount_mismatch``,
``unrecognized``). Ids are deterministic: the same callback always yields the same event id, so
consumers dedupe on ``id`` whatever the number of redeliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from contracts.callbacks import _ID_NAMESPACE, CallbackReceived
from contracts.errors import DecodeError
from contracts.ids import uuid5_text
from contracts.statuses import Kind, Status

__all__ = [
    "CLOUDEVENTS_SPECVERSION",
    "EVENT_TYPES",
    "build_event",
    "decode_event",
    "encode_event",
    "event_id",
    "event_type",
    "routing_key",
]

CLOUDEVENTS_SPECVERSION = "1.0"
EVENT_TYPES: tuple[str, ...] = tuple(
    f"payhook.{kind.value}.{status.value}" for kind in Kind for status in Status
)


def event_type(kind: Kind, status: Status) -> str:
    return f"payhook.{kind.value}.{status.value}"


def routing_key(kind: Kind, status: Status, provider: str) -> str:
    """AMQP routing key on ``payhook.events``: ``<kind>.<status>.<provider>``."""
    return f"{kind.value}.{status.value}.{provider}"


def event_id(callback_id: str, type_: str) -> str:
    return uuid5_text(_ID_NAMESPACE, f"{callback_id}\x1f{type_}")


def build_event(
    callback: CallbackReceived,
    *,
    status: Status | None = None,
    merchant: str | None = None,
    ledger: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The CloudEvent for ``callback``; ``status`` overrides the callback's own (ledger verdicts).

    ``ledger`` carries what the ledger concluded (the payment's resulting status, a mismatch
    reason); it is absent when the ledger had nothing to add.
    """
    effective = status or callback.status
    type_ = event_type(callback.kind, effective)
    data: dict[str, Any] = {
        "provider": callback.provider,
        "account": callback.account,
        "merchant": merchant,
        "transaction_id": callback.transaction_id,
        "order_id": callback.order_id,
        "kind": callback.kind.value,
        "status": effective.value,
        "provider_status": callback.provider_status,
        "amount": callback.amount,
        "currency": callback.currency,
        "paid_amount": callback.paid_amount,
        "paid_currency": callback.paid_currency,
        "refund_amount": callback.refund_amount,
        "fee_amount": callback.fee_amount,
        "fee_currency": callback.fee_currency,
        "test": callback.test,
        "verified_by": callback.verified_by.value,
        "received_at": callback.received_at,
        "callback_id": callback.id,
        "details": dict(callback.details),
        "raw": callback.raw.to_json(),
    }
    if ledger:
        data["ledger"] = dict(ledger)
    event: dict[str, Any] = {
        "specversion": CLOUDEVENTS_SPECVERSION,
        "id": event_id(callback.id, type_),
        "source": f"/payhook/{callback.provider}/{callback.account}",
        "type": type_,
        "subject": callback.transaction_id,
        "time": callback.received_at,
        "datacontenttype": "application/json",
        "data": data,
    }
    if callback.correlation_id:
        event["correlationid"] = callback.correlation_id
    return event


def encode_event(event: Mapping[str, Any]) -> bytes:
    return orjson.dumps(event)


def decode_event(body: bytes) -> dict[str, Any]:
    """Parse a structured-mode CloudEvent; checks only the envelope, not ``data``."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"event body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise DecodeError("event body is not a JSON object")
    if event.get("specversion") != CLOUDEVENTS_SPECVERSION:
        raise DecodeError(f"unsupported specversion {event.get('specversion')!r}")
    for name in ("id", "source", "type"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise DecodeError(f"event lacks {name}")
    return event
