"""RabbitMQ names and queue arguments, shared by every process that declares them.

Declaring a queue twice with different arguments fails (PRECONDITION_FAILED), so the arguments
live here, once. ``namespace`` prefixes every name: production uses ``payhook``; tests use a
fresh namespace per test so they never see each other's messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "HEADER_ATTEMPT",
    "HEADER_CORRELATION_ID",
    "HEADER_MERCHANT",
    "MIXED_CALLBACKS_ROUTING_KEY",
    "OUTBOX_CHANNEL",
    "Binding",
    "Declarations",
    "Exchange",
    "Queue",
    "Topology",
]

HEADER_CORRELATION_ID = "x-correlation-id"
HEADER_ATTEMPT = "x-payhook-attempt"
HEADER_MERCHANT = "x-payhook-merchant"
# Postgres NOTIFY channel: the ledger commits events, the relay wakes up.
OUTBOX_CHANNEL = "payhook_outbox"

# Every consumed queue has a delivery limit, so no message can loop for ever: past it the
# broker dead-letters the message (a redelivery after a crash counts; a retry published anew
# through a delay queue does not).
DELIVERY_LIMIT = 10
WEBHOOK_DELIVERY_LIMIT = 20  # deliveries are idempotent; allow more crashes mid-attempt


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    type: Literal["topic", "fanout", "direct"]


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=lambda: {"x-queue-type": "quorum"})


@dataclass(frozen=True, slots=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Declarations:
    """What to declare, in order: exchanges, then queues, then bindings (all durable)."""

    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]


# The routing key of a message whose callbacks come from several provider accounts (the
# ingress packs the callbacks ready together whatever their account); one account's message
# has ``callback.<provider>.<account>``. The ledger binds ``callback.#``: it gets both.
MIXED_CALLBACKS_ROUTING_KEY = "callback.mixed"


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

    @property
    def orders_dead_queue(self) -> str:
        return f"{self.namespace}.orders.dead"

    def ledger_queue_arguments(self) -> dict[str, Any]:
        return _dead_lettering(self.ledger_delivery_limit, self.ledger_dead_exchange)

    def webhooks_queue_arguments(self) -> dict[str, Any]:
        return _dead_lettering(WEBHOOK_DELIVERY_LIMIT, "", self.webhooks_dead_queue)

    def orders_queue_arguments(self) -> dict[str, Any]:
        return _dead_lettering(DELIVERY_LIMIT, "", self.orders_dead_queue)

    def retry_queue_arguments(self, delay_seconds: float) -> dict[str, Any]:
        """A delay queue: messages sit for ``delay_seconds``, then dead-letter to the work queue.

        Quorum with at-least-once dead-lettering, not classic: a classic queue dead-letters
        at-most-once, and a message whose TTL ran out while the broker was down is
        dead-lettered during recovery, before the (quorum) work queue is available again, and
        silently dropped (seen with RabbitMQ 3.10 in tests/webhooks/test_crash.py).
        At-least-once keeps it until the work queue confirms it; that strategy requires
        ``reject-publish`` overflow. Quorum queues expire only at the head, which is exact
        here since the TTL is uniform per queue.
        """
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": int(delay_seconds * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.webhooks_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def ingress_declarations(self) -> Declarations:
        """What the ingress publishes into: a callback is routable before any worker runs."""
        return Declarations(
            exchanges=(Exchange(self.callbacks_exchange, "topic"),),
            queues=(Queue(self.ledger_queue, self.ledger_queue_arguments()),),
            bindings=(Binding(self.ledger_queue, self.callbacks_exchange, "callback.#"),),
        )

    def declarations(self, webhook_delays: Iterable[float] = ()) -> Declarations:
        """Every exchange, queue and binding payhook uses (DESIGN.md, "Broker topology").

        ``webhook_delays``: one delay queue per distinct positive delay (step 0 of a schedule
        is "now" and needs none).
        """
        ingress = self.ingress_declarations()
        delays = sorted({d for d in webhook_delays if d > 0})
        return Declarations(
            exchanges=(
                *ingress.exchanges,
                Exchange(self.ledger_dead_exchange, "fanout"),
                Exchange(self.events_exchange, "topic"),
            ),
            queues=(
                *ingress.queues,
                Queue(self.ledger_dead_queue),
                Queue(self.webhooks_queue, self.webhooks_queue_arguments()),
                Queue(self.webhooks_dead_queue),
                *(
                    Queue(self.webhooks_retry_queue(d), self.retry_queue_arguments(d))
                    for d in delays
                ),
                Queue(self.orders_queue, self.orders_queue_arguments()),
                Queue(self.orders_dead_queue),
            ),
            bindings=(
                *ingress.bindings,
                Binding(self.ledger_dead_queue, self.ledger_dead_exchange, "#"),
                Binding(self.webhooks_queue, self.events_exchange, "#"),
            ),
        )

    def callback_routing_key(self, provider: str, account: str) -> str:
        return f"callback.{provider}.{account}"


def _dead_lettering(limit: int, exchange: str, routing_key: str | None = None) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": limit,
        "x-dead-letter-exchange": exchange,
        # at-least-once dead-lettering keeps poison messages safe until the DLQ confirms
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    if routing_key is not None:
        arguments["x-dead-letter-routing-key"] = routing_key
    return arguments


def _delay_label(delay_seconds: float) -> str:
    """``3600`` → ``1h``; ``1.5`` → ``1500ms``: readable queue names for each schedule step."""
    ms = round(delay_seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
