"""CloudEvents 1.0 (structured JSON) for downstream services and merchants.

One event per accepted provider transition, plus the ledger's own verdicts (``amount_mismatch``,
``unrecognized``). Ids are deterministic: the same callback always yields the same event id, so
consumers dedupe on ``id`` whatever the number of redeliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from contracts.callbacks import _ID_NAMESPACE, CallbackReceived
from contracts.errors import DecodeError
from contracts.ids import uuid5_text
from contracts.statuses import Kind, Status

__all__ = [
    "CLOUDEVENTS_SPECVERSION",
    "EVENT_TYPES",
    "CloudEvent",
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


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """A CloudEvents 1.0 event as structured-mode JSON carries it.

    ``id``, ``source`` and ``type`` are required; the optional attributes are ``None`` when
    absent (the JSON format treats a null attribute as absent, so none is written).
    Extension attributes payhook does not name are kept in ``extensions``, so an event read
    from a queue or the outbox re-encodes to the same document: every attempt and replay of a
    webhook signs the same bytes.
    """

    id: str
    source: str
    type: str
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = "application/json"
    correlationid: str | None = None
    data: Mapping[str, Any] | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The structured-mode JSON object."""
        doc: dict[str, Any] = {
            "specversion": CLOUDEVENTS_SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        for name, value in (
            ("subject", self.subject),
            ("time", self.time),
            ("datacontenttype", self.datacontenttype),
            ("correlationid", self.correlationid),
        ):
            if value is not None:
                doc[name] = value
        if self.data is not None:
            doc["data"] = self.data
        doc.update(self.extensions)
        return doc

    def canonical_json(self) -> bytes:
        """Sorted keys: the bytes a merchant receives, the same on every attempt and replay."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CloudEvent:
        """Checks the envelope (``DecodeError``), not what ``data`` holds."""
        if doc.get("specversion") != CLOUDEVENTS_SPECVERSION:
            raise DecodeError(f"unsupported specversion {doc.get('specversion')!r}")
        for name in ("id", "source", "type"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise DecodeError(f"event lacks {name}")
        for name in ("subject", "time", "datacontenttype", "correlationid"):
            if not isinstance(doc.get(name, ""), str | None):
                raise DecodeError(f"event {name} is not a string")
        data = doc.get("data")
        if data is not None and not isinstance(data, Mapping):
            raise DecodeError("event data is not a JSON object")
        extensions = {k: v for k, v in doc.items() if k not in _NAMED}
        return cls(
            id=doc["id"],
            source=doc["source"],
            type=doc["type"],
            subject=doc.get("subject"),
            time=doc.get("time"),
            datacontenttype=doc.get("datacontenttype"),
            correlationid=doc.get("correlationid"),
            data=data,
            extensions=extensions,
        )


# The attributes ``CloudEvent`` names; any other top-level member is an extension attribute.
_NAMED = frozenset({"specversion", *(f.name for f in fields(CloudEvent))} - {"extensions"})


def build_event(
    callback: CallbackReceived,
    *,
    status: Status | None = None,
    merchant: str | None = None,
    ledger: Mapping[str, Any] | None = None,
) -> CloudEvent:
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
    return CloudEvent(
        id=event_id(callback.id, type_),
        source=f"/payhook/{callback.provider}/{callback.account}",
        type=type_,
        subject=callback.transaction_id,
        time=callback.received_at,
        correlationid=callback.correlation_id or None,
        data=data,
    )


def encode_event(event: CloudEvent) -> bytes:
    return orjson.dumps(event.to_dict())


def decode_event(body: bytes) -> CloudEvent:
    """Parse a structured-mode CloudEvent; checks only the envelope, not ``data``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"event body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError("event body is not a JSON object")
    return CloudEvent.from_dict(doc)
