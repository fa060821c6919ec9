"""The normalized vocabulary every provider's codes are mapped onto (DESIGN.md)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Kind", "Status", "VerifiedBy"]


class Kind(StrEnum):
    PAYMENT = "payment"
    PAYOUT = "payout"


class Status(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    PARTIALLY_PAID = "partially_paid"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REFUND_PENDING = "refund_pending"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUND_FAILED = "refund_failed"
    INFO = "info"
    # Not provider states: outcomes the ledger emits so people can look at them.
    AMOUNT_MISMATCH = "amount_mismatch"
    UNRECOGNIZED = "unrecognized"


class VerifiedBy(StrEnum):
    """How the ingress proved a callback genuine; the ledger is stricter with weaker proofs."""

    SIGNATURE = "signature"  # HMAC / RSA / AES-GCM over the exact bytes
    SHARED_SECRET = "shared_secret"  # noqa: S105 - a name; the secret travels in the request (Paygol legacy `key`)
    SOURCE_ADDRESS = "source_address"  # only the client address (Paysepro)
