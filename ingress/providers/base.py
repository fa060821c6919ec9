"""The one small interface every provider module implements.

A provider module turns a raw HTTP request into a verified ``CallbackReceived`` and the exact
acknowledgement that provider expects, or raises ``Rejected``. It does no I/O: the ingress
publishes, and only after the broker confirmed does it send ``Accepted.ack``. A sixth provider
is one module implementing ``ProviderModule`` plus one line in ``ingress.providers.PROVIDERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import ProviderAccount

__all__ = [
    "Accepted",
    "Ack",
    "ProviderModule",
    "Rejected",
    "SimulatedPayment",
    "SimulatedRequest",
]


@dataclass(frozen=True, slots=True)
class Ack:
    """The response that tells the provider to stop resending."""

    status: int = 200
    body: bytes = b"OK"
    content_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class Accepted:
    callback: CallbackReceived
    ack: Ack


class Rejected(Exception):
    """A request that is not a genuine, usable callback.

    ``status``: 400 malformed or missing parameters, 401 bad signature/secret, 403 source
    address not allowed, 404 unknown account, 413 too large, 422 genuine-looking but unusable
    (wrong project id, unknown currency). ``reason`` goes to the client and the log: short,
    no secrets, no payer data. ``log_fields`` add safe context to the log line only.
    """

    def __init__(self, status: int, reason: str, **log_fields: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.log_fields = log_fields


@dataclass(frozen=True, slots=True)
class SimulatedPayment:
    """What ``payhook simulate`` asks a provider module to build a callback for."""

    order_id: str
    amount: str  # major units, e.g. "12.50"
    currency: str
    status: str  # a normalized status name, e.g. "succeeded"
    transaction_id: str | None = None  # generated when absent
    test: bool = False
    kind: str = "payment"
    extra: Mapping[str, str] = field(default_factory=dict)  # provider-specific knobs


@dataclass(frozen=True, slots=True)
class SimulatedRequest:
    """A callback exactly as the provider would send it (to ``/callbacks/<provider>/<acc>``)."""

    method: str
    query_string: str = ""
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    # The delays (seconds) between resends when the answer is not the provider's ack.
    retry_schedule: tuple[float, ...] = ()
    # The answer that stops this provider resending; ``None``: any HTTP 200 does (the provider
    # ignores the body).
    expected_ack: Ack | None = None


class ProviderModule(Protocol):
    name: str
    # Request headers worth keeping in the raw request (signature headers, content type).
    relevant_headers: tuple[str, ...]

    def check_account(self, account: ProviderAccount) -> None:
        """Raise ``contracts.ConfigError`` at start-up if the account cannot work."""

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        """Prove ``request`` genuine for ``account`` and normalize it, or raise ``Rejected``."""

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        """Build the request this provider would send for ``payment``, signed with the
        account's (first) secret."""
