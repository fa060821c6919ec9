"""One delivery of one event to one merchant, as one step of its schedule.

``Deliverer.deliver(job, publisher)`` is the whole decision; the consumer (``consumer.py``)
only decodes messages, keeps two copies of one delivery apart, calls it and settles the
message by what it returns (it returns when the message may be acked, and raises when it may
not). In order:

1. stale round (superseded by a replay) → nothing;
2. attempt already finished (redelivered or duplicated message) → finish what was decided
   then, if it was not carried out;
3. endpoint disabled (410 or operator) → delivery parked, copy to the dead queue;
4. endpoint saturated (``Endpoint.saturated``) and stuck (``busy.py``), or saturated still
   after the delivery waited ``busy.STUCK_AFTER_S`` for a slot → the message goes back to the
   broker through a short delay queue, same step, no attempt recorded;
5. attempt (or skip it while the breaker is open), record it with the decision
   (``retry.plan_next``), carry the decision out (publish to the delay queue or the dead
   queue, with confirms), mark it carried out.

A crash anywhere leaves the message unacked; its redelivery resumes at the right step, so
the schedule neither loses a delivery nor runs an attempt twice (short of a crash during the
HTTP call itself, which may repeat that one call: merchants dedupe on ``webhook-id``).

Every read and write of a delivery goes through one ``DeliveryStore``, which lets concurrent
deliveries share their round trips.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from contracts.config import Config, Merchant
from runtime.batching import Coalescer
from workers.metrics import WEBHOOK_DELIVERY_SECONDS, seconds_since, webhook_attempt
from workers.webhooks import claims, store
from workers.webhooks.busy import STUCK_AFTER_S, Progress
from workers.webhooks.delivery import AttemptResult, Endpoint, EndpointRegistry, post_event
from workers.webhooks.messages import Job, Publisher
from workers.webhooks.retry import Action, Outcome, Plan, plan_next

__all__ = ["Delivered", "Deliverer", "DeliveryStore", "Step"]

log = structlog.get_logger(__name__)

# The write after a delivered attempt waits this long for company: at a few hundred
# webhooks/s each finishes in a loop turn of its own, so batching by turn alone left one
# commit per webhook. Only the ack is later; a crash in between redelivers a message whose
# attempt is found recorded (or is made again).
RECORD_LINGER_S = 0.005
# The lookup before an attempt waits as long for company, at that much latency to the
# merchant: at 500 webhooks/s it took a quarter to a third of the worker's Postgres time
# per webhook (250-267 -> 159-195 us in four interleaved pairs; docs/operations.md).
LOOKUP_LINGER_S = 0.005


class Step(enum.Enum):
    """What ``deliver`` did with the message (the numbered steps above)."""

    STALE = "stale"  # 1
    DUPLICATE = "duplicate"  # 2, nothing left to do
    RESUMED = "resumed"  # 2, the decision carried out now
    PARKED = "parked"  # 3
    DEFERRED = "deferred"  # 4, or a twin holds the attempt (``claims``)
    ATTEMPTED = "attempted"  # 5


@dataclass(frozen=True, slots=True)
class Delivered:
    step: Step
    plan: Plan | None = None  # the decision carried out (ATTEMPTED, RESUMED)
    result: AttemptResult | None = None  # the attempt's (ATTEMPTED)


class DeliveryStore:
    """The delivery tables as a delivery reads and writes them.

    Concurrent deliveries share their round trips: one lookup and one write statement for all
    that reach that step within a few ms of each other.
    """

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool
        self._lookups: Coalescer[store.AttemptKey, store.Lookup] = Coalescer(
            lambda keys: store.lookup_many(pool, keys), linger_s=LOOKUP_LINGER_S
        )
        self._records: Coalescer[store.Finished, None] = Coalescer(
            lambda items: store.record_attempts(pool, items), linger_s=RECORD_LINGER_S
        )

    async def lookup(self, key: store.AttemptKey) -> store.Lookup:
        return await self._lookups.submit(key)

    async def open(self, job: Job, round_: int | None = None) -> None:
        """The delivery row exists (in ``round_``, default the job's, or a newer one)."""
        await store.open_delivery(
            self.pool,
            job.event_id,
            job.merchant,
            job.event_type,
            job.round if round_ is None else round_,
        )

    async def park(self, job: Job, reason: str) -> None:
        await self.open(job)
        await store.park_delivery(self.pool, job.event_id, job.merchant, job.round, reason)

    async def record(self, job: Job, result: AttemptResult, plan: Plan) -> None:
        """The attempt and the decision after it; a 410 disables the endpoint with them."""
        finished = store.FinishedAttempt(
            result.outcome,
            result.status_code,
            result.error_class,
            result.response_body,
            result.duration_ms,
        )
        if result.outcome is Outcome.GONE:
            await store.record_attempt(self.pool, job.key(), job.event_type, finished, plan)
        else:
            await self._records.submit((job.key(), job.event_type, finished, plan))

    async def claim(self, key: store.AttemptKey, lease_s: float) -> bool:
        return await claims.claim_attempt(self.pool, key, lease_s)

    async def mark_followed_up(self, key: store.AttemptKey) -> None:
        await store.mark_followed_up(self.pool, key)


class _WaitedTooLong(Exception):
    """A delivery waited for its slot while the endpoint stayed saturated: hop (busy.py)."""


class Deliverer:
    """Everything a delivery needs but the broker session, built once per process."""

    def __init__(
        self,
        config: Config,
        deliveries: DeliveryStore,
        endpoints: EndpointRegistry,
        busy_delay_s: float = 0.0,
        wait_limit: int = 0,
    ) -> None:
        self.config = config
        self.schedule = config.webhook_schedule
        self.deliveries = deliveries
        self.endpoints = endpoints
        self.busy_delay_s = busy_delay_s
        # An endpoint may hold this many waiting or running deliveries (at least twice its
        # max_in_flight) before further ones hop through the broker.
        self.wait_limit = wait_limit
        self.metrics = False
        # Set while the overdue sweeper runs: attempts that may have its twin claim first.
        self.claim_twins = False
        self._progress_of: dict[str, Progress] = {}  # merchant id -> its endpoint's progress

    async def deliver(self, job: Job, publisher: Publisher) -> Delivered:
        """The steps above for ``job``; returns once the message may be acked."""
        key = job.key()
        found = await self.deliveries.lookup(key)
        if job.round < found.round:
            log.info("webhooks.stale_message", current_round=found.round)
            return Delivered(Step.STALE)
        if found.exists and job.round > found.round:
            # An operator's replay whose round the table does not know yet: move it on.
            await self.deliveries.open(job)
        record = found.record
        if record is not None and record.finished:
            if record.plan is not None and not record.followed_up:
                log.info("webhooks.resuming_follow_up", next=record.plan.action.value)
                await self._follow_up(job, record.plan, publisher)
                return Delivered(Step.RESUMED, record.plan)
            log.info("webhooks.duplicate_message")
            return Delivered(Step.DUPLICATE, record.plan)

        merchant = self.config.merchants.get(job.merchant)
        disabled = _disabled_reason(merchant, found.disabled_reason)
        endpoint = self.endpoints.get(job.merchant)
        if disabled is not None or endpoint is None:
            reason = disabled or "unknown merchant"
            await self.deliveries.park(job, reason)
            await publisher.dead(job, f"parked: {reason}")
            log.warning("webhooks.parked", reason=reason)
            return Delivered(Step.PARKED)

        if self._may_hop(endpoint) and self._progress(endpoint).stuck(time.monotonic()):
            # Not an attempt: the same step comes back after a short hop through a delay
            # queue, so this message's prefetch slot is free for other merchants meanwhile
            # (busy.py: only for an endpoint that is stuck, not for one that is merely busy).
            await self._hop(job, "endpoint stuck", publisher)
            return Delivered(Step.DEFERRED)

        try:
            result = await self._attempt(endpoint, key, job)
        except claims.AttemptInFlight:
            await self._in_flight_elsewhere(job, publisher)
            return Delivered(Step.DEFERRED)
        except _WaitedTooLong:
            await self._hop(job, "waited for a slot", publisher)
            return Delivered(Step.DEFERRED)
        if self.metrics:
            webhook_attempt(job.merchant, result.status_code, result.error_class)
            if result.outcome is Outcome.DELIVERED:
                took = seconds_since(job.event.time or "")
                if took is not None:
                    WEBHOOK_DELIVERY_SECONDS.labels(job.merchant).observe(max(0.0, took))
        plan = plan_next(job.attempt, result.outcome, self.schedule, result.retry_after)
        await self.deliveries.record(job, result, plan)
        log.info(
            "webhooks.attempted",
            outcome=result.outcome.value,
            status_code=result.status_code,
            error_class=result.error_class,
            duration_ms=result.duration_ms,
            next=plan.action.value,
            delay_s=plan.delay if plan.action is Action.RETRY else None,
        )
        await self._follow_up(job, plan, publisher)
        return Delivered(Step.ATTEMPTED, plan, result)

    async def _attempt(self, endpoint: Endpoint, key: store.AttemptKey, job: Job) -> AttemptResult:
        breaker = endpoint.breaker
        # Checked before waiting for a slot, so an open breaker sheds queued work at once...
        if breaker.state == "open":
            return _CIRCUIT_OPEN
        endpoint.pending += 1
        try:
            await self._take_slot(endpoint)
            try:
                # Its twin from the overdue sweeper may be at this step in another process.
                if (
                    self.claim_twins
                    and claims.may_have_twin(key)
                    and not await self.deliveries.claim(
                        key, endpoint.merchant.timeout_s + claims.CLAIM_MARGIN_S
                    )
                ):
                    raise claims.AttemptInFlight
                # ...and again after, since it may have opened while this one waited.
                if not breaker.allow():
                    return _CIRCUIT_OPEN
                progress = self._progress(endpoint)
                progress.started(time.monotonic())
                try:
                    result = await post_event(endpoint, job.event_id, job.event.canonical_json())
                except BaseException:
                    breaker.release()
                    raise
                finally:
                    progress.finished(time.monotonic())
            finally:
                endpoint.semaphore.release()
        finally:
            endpoint.pending -= 1
        if result.outcome is Outcome.DELIVERED:
            breaker.record_success()
        elif result.outcome is Outcome.FAILED:
            breaker.record_failure()
        else:
            breaker.release()
        return result

    def _may_hop(self, endpoint: Endpoint) -> bool:
        # An open breaker needs no hop: the skip after the slot costs no waiting.
        return (
            self.busy_delay_s > 0
            and endpoint.saturated(self.wait_limit)
            and endpoint.breaker.state != "open"
        )

    def _progress(self, endpoint: Endpoint) -> Progress:
        progress = self._progress_of.get(endpoint.merchant.id)
        if progress is None:
            progress = self._progress_of[endpoint.merchant.id] = Progress()
        return progress

    async def _take_slot(self, endpoint: Endpoint) -> None:
        """One of the endpoint's ``max_in_flight`` slots; ``_WaitedTooLong`` if, after each
        ``STUCK_AFTER_S`` of waiting, the endpoint is still saturated (busy.py)."""
        if self.busy_delay_s <= 0 or not endpoint.semaphore.locked():
            await endpoint.semaphore.acquire()  # free (or no hop queue): no timer needed
            return
        while True:
            try:
                async with asyncio.timeout(STUCK_AFTER_S):
                    await endpoint.semaphore.acquire()  # cancel-safe: a permit is never lost
                return
            except TimeoutError:
                if self._may_hop(endpoint):
                    raise _WaitedTooLong from None

    async def _hop(self, job: Job, why: str, publisher: Publisher) -> None:
        await publisher.retry(job, job.attempt, self.busy_delay_s)
        log.info("webhooks.deferred_busy", delay_s=self.busy_delay_s, why=why)

    async def _in_flight_elsewhere(self, job: Job, publisher: Publisher) -> None:
        # Not an attempt: come back as the same step after the busy hop, and find it recorded
        # (a no-op) or its holder dead and the claim expired. Without a hop queue it is dropped:
        # the delivery stays pending, so the sweeper re-publishes it if the holder never
        # records it.
        log.info("webhooks.attempt_in_flight_elsewhere")
        if self.busy_delay_s > 0:
            await publisher.retry(job, job.attempt, self.busy_delay_s)

    async def _follow_up(self, job: Job, plan: Plan, publisher: Publisher) -> None:
        if plan.action is Action.RETRY:
            assert plan.next_attempt is not None
            await publisher.retry(job, plan.next_attempt, plan.delay)
        elif plan.action is Action.DEAD:
            await publisher.dead(job, "schedule exhausted")
            log.warning("webhooks.failed", attempts=job.attempt)
        elif plan.action is Action.PARK:
            await publisher.dead(job, "parked: 410 Gone")
            log.warning("webhooks.endpoint_gone")
        else:
            return  # delivered: its record marked it followed up already
        await self.deliveries.mark_followed_up(job.key())


_CIRCUIT_OPEN = AttemptResult(Outcome.FAILED, error_class="circuit_open")


def _disabled_reason(merchant: Merchant | None, endpoint_reason: str | None) -> str | None:
    if endpoint_reason is not None:
        return f"endpoint disabled: {endpoint_reason}"
    if merchant is not None and not merchant.enabled:
        return "endpoint disabled in config"
    return None
