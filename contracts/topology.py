"""RabbitMQ names and queue arguments, shared by every process that declares them.

Declaring a queue twice with different arguments fails (PRECONDITION_FAILED), so the arguments
live here, once. ``namespace`` prefixes every name: production uses ``payhook``; tests use a
fresh namespace per test so they never see each other's messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HEADER_ATTEMPT", "HEADER_CORRELATION_ID", "HEADER_MERCHANT", "Topology"]

HEADER_CORRELATION_ID = "x-correlation-id"
HEADER_ATTEMPT = "x-payhook-attempt"
HEADER_MERCHANT = "x-payhook-merchant"


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = "payhook"
    # How many times the ledger may receive one message before it is dead-lettered as poison.
    ledger_delivery_limit: int = 10

    # ingress → ledger
    @property
    def callbacks_exchange(self) -> str:
        return f"{self.namespace}.callbacks"

    @property
    def ledger_queue(self) -> str:
        return f"{self.namespace}.ledger"

    @property
    def ledger_dead_exchange(self) -> str:
        return f"{self.namespace}.ledger.dlx"

    @property
    def ledger_dead_queue(self) -> str:
        return f"{self.namespace}.ledger.dead"

    # ledger (outbox relay) → downstream services and the webhook worker
    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def webhooks_queue(self) -> str:
        return f"{self.namespace}.webhooks"

    @property
    def webhooks_dead_queue(self) -> str:
        return f"{self.namespace}.webhooks.dead"

    def webhooks_retry_queue(self, delay_seconds: float) -> str:
        return f"{self.namespace}.webhooks.retry.{_delay_label(delay_seconds)}"

    # merchants' checkouts → ledger (order expectations)
    @property
    def orders_queue(self) -> str:
        return f"{self.namespace}.orders"

    def ledger_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.ledger_delivery_limit,
            "x-dead-letter-exchange": self.ledger_dead_exchange,
            # at-least-once dead-lettering keeps poison messages safe until the DLQ confirms
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def callback_routing_key(self, provider: str, account: str) -> str:
        return f"callback.{provider}.{account}"


def _delay_label(delay_seconds: float) -> str:
    """``3600`` → ``1h``; ``1.5`` → ``1500ms``: readable queue names for each schedule step."""
    ms = round(delay_seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
