"""``CallbackReceived``: what the ingress publishes for the ledger once a callback is proven.

It carries both the normalized reading of the callback and the raw request exactly as it
arrived, so that a mapping bug can be fixed and the callback re-read later without asking the
provider again.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from contracts.errors import DecodeError
from contracts.ids import uuid5_text
from contracts.statuses import Kind, Status, VerifiedBy

__all__ = [
    "CALLBACK_BATCH_TYPE",
    "CALLBACK_SCHEMA_VERSION",
    "CALLBACK_TYPE",
    "CallbackReceived",
    "RawRequest",
    "callback_id",
    "decode_callback",
    "decode_callbacks",
    "encode_callback",
    "encode_callbacks",
]

CALLBACK_SCHEMA_VERSION = 1
# AMQP ``type`` of a message holding one callback (a JSON object) or several (a JSON array).
CALLBACK_TYPE = "payhook.callback.received"
CALLBACK_BATCH_TYPE = "payhook.callback.batch"

# uuid5 namespace for callback and event ids: fixed forever, or ids stop being stable.
_ID_NAMESPACE = uuid.UUID("6f1c2b7e-4f0e-5a53-9d8e-70a1c7b0f3a1")


@dataclass(frozen=True, slots=True)
class RawRequest:
    """The request as received: the bytes signatures were checked over."""

    method: str
    path: str
    query_string: str  # raw, undecoded, without the leading "?"
    body: bytes
    headers: Mapping[str, str]  # only the ones a provider module marked as relevant
    remote: str  # client address after trusted-proxy resolution

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "path": self.path,
            "query": self.query_string,
            "headers": dict(self.headers),
            "remote": self.remote,
        }
        try:
            out["body"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(self.body).decode("ascii")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RawRequest:
        if "body_b64" in data:
            body = base64.b64decode(data["body_b64"])
        else:
            body = str(data.get("body", "")).encode("utf-8")
        return cls(
            method=str(data["method"]),
            path=str(data["path"]),
            query_string=str(data.get("query", "")),
            body=body,
            headers={str(k): str(v) for k, v in dict(data.get("headers", {})).items()},
            remote=str(data.get("remote", "")),
        )


def callback_id(
    provider: str, account: str, transaction_id: str, provider_status: str, variant: str = ""
) -> str:
    """The deterministic id of one provider transition: the same callback always maps here.

    ``variant`` separates genuinely different callbacks that share a status, e.g. two partial
    refunds of one payment (the provider module puts the refund's own id or amount there).
    """
    key = "\x1f".join((provider, account, transaction_id, provider_status, variant))
    return uuid5_text(_ID_NAMESPACE, key)


@dataclass(frozen=True, slots=True)
class CallbackReceived:
    """A verified, normalized provider callback.

    Amounts are integer minor units; ``None`` where the provider did not say. ``amount`` is
    what the merchant asked for, ``paid_amount`` what was actually paid (partials, conversions),
    ``refund_amount`` what a refund callback refunds, ``fee_amount`` the provider's fee.
    """

    provider: str
    account: str
    transaction_id: str
    provider_status: str
    status: Status
    kind: Kind
    verified_by: VerifiedBy
    received_at: str  # RFC 3339, UTC
    raw: RawRequest
    order_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    paid_amount: int | None = None
    paid_currency: str | None = None
    refund_amount: int | None = None
    fee_amount: int | None = None
    fee_currency: str | None = None
    test: bool = False
    variant: str = ""
    correlation_id: str = ""
    # Provider-specific fields worth keeping in the event (never secrets; payer data only
    # where the merchant needs it, and never logged).
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return callback_id(
            self.provider, self.account, self.transaction_id, self.provider_status, self.variant
        )

    @property
    def dedupe_key(self) -> str:
        """Readable form of what ``id`` hashes, for logs and the ledger's unique index."""
        return "/".join(
            (self.provider, self.account, self.transaction_id, self.provider_status, self.variant)
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": CALLBACK_SCHEMA_VERSION, "id": self.id}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "raw":
                out["raw"] = value.to_json()
            elif f.name == "details":
                out["details"] = dict(value)
            else:
                out[f.name] = value.value if hasattr(value, "value") else value
        return out


_REQUIRED = (
    "provider",
    "account",
    "transaction_id",
    "provider_status",
    "status",
    "kind",
    "verified_by",
    "received_at",
    "raw",
)


def encode_callback(callback: CallbackReceived) -> bytes:
    return orjson.dumps(callback.to_json())


def encode_callbacks(callbacks: Sequence[CallbackReceived]) -> bytes:
    """A batch message body: a JSON array of ``CallbackReceived`` documents."""
    return orjson.dumps([callback.to_json() for callback in callbacks])


def decode_callback(body: bytes) -> CallbackReceived:
    """Parse a ``CallbackReceived`` body; raises ``DecodeError`` on anything else."""
    data = _loads(body)
    if not isinstance(data, dict):
        raise DecodeError("callback body is not a JSON object")
    return _from_document(data)


def decode_callbacks(body: bytes) -> list[tuple[CallbackReceived, bytes]]:
    """Parse a ledger message body: one callback (an object) or a batch (a non-empty array).

    Returns each callback with its own JSON document, to be stored verbatim. One malformed
    element makes the whole body malformed: the ingress wrote it, so that is a bug to look at.
    """
    data = _loads(body)
    if isinstance(data, dict):
        return [(_from_document(data), body)]
    if not isinstance(data, list) or not data:
        raise DecodeError("callback body is neither a JSON object nor a non-empty array")
    out: list[tuple[CallbackReceived, bytes]] = []
    for element in data:
        if not isinstance(element, dict):
            raise DecodeError("callback batch holds something that is not a JSON object")
        out.append((_from_document(element), orjson.dumps(element)))
    return out


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"callback body is not JSON: {exc}") from None


def _from_document(data: dict[str, Any]) -> CallbackReceived:
    if data.get("schema_version") != CALLBACK_SCHEMA_VERSION:
        raise DecodeError(f"unsupported callback schema_version {data.get('schema_version')!r}")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise DecodeError(f"callback lacks {', '.join(missing)}")
    try:
        callback = CallbackReceived(
            provider=str(data["provider"]),
            account=str(data["account"]),
            transaction_id=str(data["transaction_id"]),
            provider_status=str(data["provider_status"]),
            status=Status(data["status"]),
            kind=Kind(data["kind"]),
            verified_by=VerifiedBy(data["verified_by"]),
            received_at=str(data["received_at"]),
            raw=RawRequest.from_json(data["raw"]),
            order_id=_opt_str(data.get("order_id")),
            amount=_opt_int(data.get("amount")),
            currency=_opt_str(data.get("currency")),
            paid_amount=_opt_int(data.get("paid_amount")),
            paid_currency=_opt_str(data.get("paid_currency")),
            refund_amount=_opt_int(data.get("refund_amount")),
            fee_amount=_opt_int(data.get("fee_amount")),
            fee_currency=_opt_str(data.get("fee_currency")),
            test=bool(data.get("test", False)),
            variant=str(data.get("variant", "")),
            correlation_id=str(data.get("correlation_id", "")),
            details=dict(data.get("details") or {}),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise DecodeError(f"callback body is malformed: {exc}") from None
    if "id" in data and data["id"] != callback.id:
        raise DecodeError("callback id does not match its content")
    return callback


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"amount {value!r} is not an integer of minor units")
    return value
