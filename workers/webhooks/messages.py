"""AMQP messages of the webhook worker: headers, the retry/dead publisher, replays.

A targeted message (retry, replay, dead copy) carries the CloudEvent as its body and says in
headers whom it is for (``x-payhook-merchant``), which step of the schedule it is
(``x-payhook-attempt``) and which replay round (``x-payhook-round``, local to webhooks: a
replay starts a new round and messages of older rounds are dropped as stale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

from contracts.events import CloudEvent
from contracts.topology import HEADER_ATTEMPT, HEADER_CORRELATION_ID, HEADER_MERCHANT, Topology
from workers.webhooks import store

__all__ = [
    "HEADER_DEAD_REASON",
    "HEADER_ROUND",
    "Job",
    "Publisher",
    "header_int",
    "header_str",
    "headers_for",
    "replay_message",
]

HEADER_ROUND = "x-payhook-round"
HEADER_DEAD_REASON = "x-payhook-dead-reason"


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery attempt to make: this event, to this merchant, as this step."""

    event: CloudEvent
    merchant: str
    round: int
    attempt: int
    correlation_id: str

    @property
    def event_id(self) -> str:
        return self.event.id

    @property
    def event_type(self) -> str:
        return self.event.type

    def key(self) -> store.AttemptKey:
        return store.AttemptKey(self.event_id, self.merchant, self.round, self.attempt)


class Publisher:
    """Persistent, confirmed, mandatory publishes to the retry and dead queues."""

    def __init__(self, channel: AbstractChannel, topology: Topology, timeout_s: float) -> None:
        self._channel = channel
        self._topology = topology
        self._timeout_s = timeout_s

    async def retry(self, job: Job, attempt: int, delay: float) -> None:
        # A zero delay (a schedule step of 0 after the first) goes straight back to the queue.
        queue = (
            self._topology.webhooks_retry_queue(delay)
            if delay > 0
            else self._topology.webhooks_queue
        )
        await self._publish(queue, job.event.canonical_json(), headers_for(job, attempt), job)

    async def dead(
        self,
        job: Job | None,
        reason: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Park a copy in ``<ns>.webhooks.dead`` (Postgres stays the record for replays)."""
        if job is not None:
            body, out = job.event.canonical_json(), headers_for(job, job.attempt)
        else:
            out = dict(headers or {})
        out[HEADER_DEAD_REASON] = reason
        await self._publish(self._topology.webhooks_dead_queue, body, out, job)

    async def _publish(
        self, queue: str, body: bytes, headers: dict[str, Any], job: Job | None
    ) -> None:
        message = aio_pika.Message(
            body=body,
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/cloudevents+json",
            message_id=job.event_id if job else None,
            correlation_id=(job.correlation_id or None) if job else None,
        )
        # mandatory: a missing queue must fail the publish (and keep the message unacked),
        # not drop the delivery on the floor.
        await self._channel.default_exchange.publish(
            message, routing_key=queue, mandatory=True, timeout=self._timeout_s
        )


def headers_for(job: Job, attempt: int) -> dict[str, Any]:
    return {
        HEADER_MERCHANT: job.merchant,
        HEADER_ATTEMPT: attempt,
        HEADER_ROUND: job.round,
        HEADER_CORRELATION_ID: job.correlation_id,
    }


def header_str(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def header_int(headers: Mapping[str, Any], name: str, default: int) -> int:
    value = header_str(headers, name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def replay_message(
    event: CloudEvent, merchant: str, round_: int, correlation_id: str
) -> aio_pika.Message:
    """A replay: attempt 1 of a fresh schedule in a new round, for one merchant."""
    job = Job(event, merchant, round_, 1, correlation_id)
    return aio_pika.Message(
        body=event.canonical_json(),
        headers=headers_for(job, 1),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/cloudevents+json",
        message_id=job.event_id,
        correlation_id=correlation_id or None,
    )
