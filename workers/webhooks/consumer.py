"""The webhook worker: consume ``<ns>.webhooks``, deliver, schedule the next attempt.

Two kinds of message arrive on the queue. A message without ``x-payhook-merchant`` is a fresh
event from the events exchange: the worker finds the merchant subscribed to it (if none, it
is acked and forgotten). A message with the header is a retry (back from a delay queue) or an
operator's replay, for that merchant only; ``x-payhook-attempt`` says which step of the
schedule it is (default 1) and ``x-payhook-round`` which replay it belongs to (default 0).

For each (event, merchant), in order:
1. stale round (superseded by a replay) → ack, nothing else;
2. attempt already finished (redelivered or duplicated message) → finish what was decided
   then, if it was not carried out, and ack;
3. endpoint disabled (410 or operator) → delivery parked, copy to the dead queue, ack;
4. endpoint saturated (``Endpoint.saturated``) and stuck (``busy.py``), or saturated still
   after the delivery waited ``busy.STUCK_AFTER_S`` for a slot → hand the message back to
   the broker through a short delay queue, same step, no attempt recorded, ack;
5. attempt (or skip it while the breaker is open), record it with the decision
   (``retry.plan_next``), carry the decision out — publish to the delay queue or the dead
   queue, with confirms — mark it carried out, and only then ack.
A crash anywhere leaves the message unacked; its redelivery resumes at the right step, so
the schedule neither loses a delivery nor runs an attempt twice (short of a crash during the
HTTP call itself, which may repeat that one call: merchants dedupe on ``webhook-id``).

Outcomes are settled by ``runtime.consume``: a Postgres or RabbitMQ outage holds the message
and retries it once the server is back (or leaves it to the broker if the connection went);
an unexpected error requeues it, and the queue's delivery limit dead-letters a message that
keeps failing to ``<ns>.webhooks.dead``, so nothing loops for ever.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import asyncpg
import structlog
from aiormq.abc import DeliveredMessage

from contracts.config import Config, Merchant
from contracts.errors import DecodeError
from contracts.events import CloudEvent, decode_event
from contracts.topology import HEADER_ATTEMPT, HEADER_CORRELATION_ID, HEADER_MERCHANT, Topology
from runtime import database
from runtime.acks import ChannelAcks
from runtime.batching import Coalescer
from runtime.broker import BrokerNodes, Session, declare, run_sessions
from runtime.consume import handle_message
from runtime.delivered import RawDelivery
from runtime.metrics import refresh_periodically
from runtime.process import RoleContext
from workers.metrics import (
    BREAKER_STATES,
    WEBHOOK_BREAKER,
    WEBHOOK_DELIVERY_SECONDS,
    refresh_deliveries,
    seconds_since,
    webhook_attempt,
)
from workers.webhooks import claims, store
from workers.webhooks.busy import STUCK_AFTER_S, Progress
from workers.webhooks.delivery import (
    AttemptResult,
    Endpoint,
    EndpointRegistry,
    post_event,
)
from workers.webhooks.messages import HEADER_ROUND, Job, Publisher, header_int, header_str
from workers.webhooks.retry import Action, Outcome, Plan, plan_next
from workers.webhooks.sweeper import Sweeper

__all__ = ["WebhookWorker", "run_webhook_worker", "subscribed"]

log = structlog.get_logger(__name__)

# Settling after a delivered attempt (the attempt's write, then the ack) waits this long for
# company: at a few hundred webhooks/s each finishes in a loop turn of its own, so batching by
# turn alone left one commit and one ack frame per webhook. Only the ack is later; a crash in
# between redelivers a message whose attempt is found recorded (or is made again).
_RECORD_LINGER_S = 0.005
_ACK_LINGER_S = 0.005
# The lookup before an attempt waits as long for company, at that much latency to the
# merchant: at 500 webhooks/s it took a quarter to a third of the worker's Postgres time
# per webhook (250-267 -> 159-195 us in four interleaved pairs; docs/operations.md).
_LOOKUP_LINGER_S = 0.005


def subscribed(patterns: tuple[str, ...], event_type: str) -> bool:
    """``*``, an exact type, or a shell-style pattern such as ``payhook.payment.*``."""
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


class _KeyedLocks:
    """One lock per delivery, so two copies of its message never work on it at once.

    After a broker reconnect the unacked messages come again while their first handlers may
    still be running; the copy waits, then finds the attempt finished (step 2 above). Plain
    acquire and release (the caller's try/finally), not an async context manager: that one
    cost a generator and two awaits more on every delivery.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: tuple[str, str]) -> None:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()  # cancel-safe: a cancelled wait holds nothing
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: tuple[str, str]) -> None:
        self._locks[key][0].release()
        self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)


class _WaitedTooLong(Exception):
    """A delivery waited for its slot while the endpoint stayed saturated: hop (busy.py)."""


class WebhookWorker:
    """Everything a delivery needs, built once; ``handle`` is the queue's callback."""

    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool[Any],
        publisher: Publisher | None,
        endpoints: EndpointRegistry,
        stop: asyncio.Event,
        busy_delay_s: float = 0.0,
        prefetch: int = 0,
    ) -> None:
        self.config = config
        self.busy_delay_s = busy_delay_s
        # An endpoint may hold up to half the prefetch (at least twice its max_in_flight) in
        # waiting or running deliveries before further ones hop through the broker: a fast
        # merchant is served at full speed, a hanging one cannot take more than half.
        self.wait_limit = prefetch // 2
        self.schedule = config.webhook_schedule
        self.pool = pool
        self._publisher = publisher
        self.endpoints = endpoints
        self.stop = stop
        # Set when the broker session the current messages came from is lost.
        self.lost = asyncio.Event()
        # Acks of the current consuming channel, batched (None: one ack per message).
        self.acks: ChannelAcks | None = None
        self._locks = _KeyedLocks()
        self._progress_of: dict[str, Progress] = {}  # merchant id -> its endpoint's progress
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics = False
        # Set while the overdue sweeper runs: attempts that may have its twin claim first.
        self.claim_twins = False
        # Concurrent deliveries share their Postgres round trips: one lookup and one write
        # statement for all that reach that step within a few ms of each other.
        self._lookups: Coalescer[store.AttemptKey, store.Lookup] = Coalescer(
            lambda keys: store.lookup_many(self.pool, keys), linger_s=_LOOKUP_LINGER_S
        )
        # The write after an attempt may wait a few ms for others: it delays only the ack
        # (the merchant has the webhook already) and shares one commit among more of them.
        self._records: Coalescer[store.Finished, None] = Coalescer(
            lambda items: store.record_attempts(self.pool, items), linger_s=_RECORD_LINGER_S
        )

    def export_metrics(self) -> None:
        """Count attempts, and read each merchant's breaker state at every scrape."""
        self.metrics = True
        for merchant_id in self.config.merchants:
            endpoint = self.endpoints.get(merchant_id)
            if endpoint is not None:
                WEBHOOK_BREAKER.labels(merchant_id).set_function(_breaker_state(endpoint))

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise ConnectionRefusedError("no broker session")  # an outage: waited out
        return self._publisher

    def attach(
        self, publisher: Publisher, lost: asyncio.Event, acks: ChannelAcks | None = None
    ) -> None:
        """Use a new broker session's publisher (and its channel's acks) from now on."""
        self._publisher, self.lost, self.acks = publisher, lost, acks

    # -- message handling ------------------------------------------------------------------

    async def on_message(self, delivered: DeliveredMessage) -> None:
        """aiormq's consumer callback (``basic_consume`` on the raw channel)."""
        message = RawDelivery(delivered)
        # Own task per message: its lifetime is ours (drained on shutdown), not the channel's
        # (aiormq cancels its own tasks when the channel closes, and a delivery cut off
        # mid-call would be made again after the redelivery instead of being recorded).
        acks = self.acks
        if acks is not None:
            acks.received(message)  # before any await: tags are registered in arrival order
        task = asyncio.create_task(self.handle(message, acks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, message: RawDelivery, acks: ChannelAcks | None = None) -> None:
        async def process(message: RawDelivery) -> None:
            await self.process(message.body, message.headers)

        if acks is None:
            await handle_message(message, process, stop=self.stop, lost=self.lost)
        else:
            await handle_message(message, process, stop=self.stop, lost=self.lost, settler=acks)

    async def process(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """Handle one message body; returns when it may be acked, raises when it may not."""
        merchant = header_str(headers, HEADER_MERCHANT)
        correlation_id = header_str(headers, HEADER_CORRELATION_ID) or ""
        try:
            event = decode_event(body)
        except DecodeError as exc:
            log.warning("webhooks.undecodable", reason=str(exc))
            await self.publisher.dead(None, "undecodable", body=body, headers=headers)
            return
        correlation_id = correlation_id or event.correlationid or ""
        if merchant is None:
            targets = self.subscribers(event)
            if not targets:
                return
            jobs = [Job(event, m, 0, 1, correlation_id) for m in targets]
            if self.schedule[0] > 0:
                # Even attempt 1 waits when the schedule says so.
                await asyncio.gather(*(self._delay_first(job) for job in jobs))
                return
        else:
            round_ = header_int(headers, HEADER_ROUND, 0)
            attempt = header_int(headers, HEADER_ATTEMPT, 1)
            jobs = [Job(event, merchant, round_, attempt, correlation_id)]
        if len(jobs) == 1:
            await self.deliver(jobs[0])  # gather would wrap it in one more task
        else:
            await asyncio.gather(*(self.deliver(job) for job in jobs))

    def subscribers(self, event: CloudEvent) -> list[str]:
        data = event.data
        if data is None:
            return []
        merchant = self.config.merchant_for(str(data.get("provider")), str(data.get("account")))
        if merchant is None or not subscribed(merchant.events, event.type):
            return []
        return [merchant.id]

    async def _delay_first(self, job: Job) -> None:
        await store.open_delivery(self.pool, job.event_id, job.merchant, job.event_type, 0)
        await self.publisher.retry(job, 1, self.schedule[0])

    # -- one delivery ----------------------------------------------------------------------

    async def deliver(self, job: Job) -> None:
        # Every log line of the delivery carries these (bound_contextvars without its
        # context manager: the same tokens, reset the same way, a generator less).
        tokens = structlog.contextvars.bind_contextvars(
            event_id=job.event_id,
            merchant=job.merchant,
            attempt=job.attempt,
            round=job.round,
            correlation_id=job.correlation_id,
        )
        key = (job.event_id, job.merchant)
        try:
            await self._locks.acquire(key)
            try:
                await self._deliver(job)
            finally:
                self._locks.release(key)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _deliver(self, job: Job) -> None:
        key = job.key()
        found = await self._lookups.submit(key)
        if job.round < found.round:
            log.info("webhooks.stale_message", current_round=found.round)
            return
        if found.exists and job.round > found.round:
            # An operator's replay whose round the table does not know yet: move it on.
            await store.open_delivery(
                self.pool, job.event_id, job.merchant, job.event_type, job.round
            )
        record = found.record
        if record is not None and record.finished:
            if record.plan is not None and not record.followed_up:
                log.info("webhooks.resuming_follow_up", next=record.plan.action.value)
                await self._follow_up(job, key, record.plan)
            else:
                log.info("webhooks.duplicate_message")
            return

        merchant = self.config.merchants.get(job.merchant)
        disabled = _disabled_reason(merchant, found.disabled_reason)
        endpoint = self.endpoints.get(job.merchant)
        if disabled is not None or endpoint is None:
            reason = disabled or "unknown merchant"
            await store.open_delivery(
                self.pool, job.event_id, job.merchant, job.event_type, job.round
            )
            await store.park_delivery(self.pool, job.event_id, job.merchant, job.round, reason)
            await self.publisher.dead(job, f"parked: {reason}")
            log.warning("webhooks.parked", reason=reason)
            return

        if self._may_hop(endpoint) and self._progress(endpoint).stuck(time.monotonic()):
            # Not an attempt: the same step comes back after a short hop through a delay
            # queue, so this message's prefetch slot is free for other merchants meanwhile
            # (busy.py: only for an endpoint that is stuck, not for one that is merely busy).
            await self._hop(job, "endpoint stuck")
            return

        try:
            result = await self._attempt(endpoint, key, job)
        except claims.AttemptInFlight:
            await self._in_flight_elsewhere(job)
            return
        except _WaitedTooLong:
            await self._hop(job, "waited for a slot")
            return
        if self.metrics:
            webhook_attempt(job.merchant, result.status_code, result.error_class)
            if result.outcome is Outcome.DELIVERED:
                took = seconds_since(job.event.time or "")
                if took is not None:
                    WEBHOOK_DELIVERY_SECONDS.labels(job.merchant).observe(max(0.0, took))
        plan = plan_next(job.attempt, result.outcome, self.schedule, result.retry_after)
        finished = store.FinishedAttempt(
            result.outcome,
            result.status_code,
            result.error_class,
            result.response_body,
            result.duration_ms,
        )
        if result.outcome is Outcome.GONE:
            await store.record_attempt(self.pool, key, job.event_type, finished, plan)
        else:
            await self._records.submit((key, job.event_type, finished, plan))
        log.info(
            "webhooks.attempted",
            outcome=result.outcome.value,
            status_code=result.status_code,
            error_class=result.error_class,
            duration_ms=result.duration_ms,
            next=plan.action.value,
            delay_s=plan.delay if plan.action is Action.RETRY else None,
        )
        await self._follow_up(job, key, plan)

    async def _attempt(self, endpoint: Endpoint, key: store.AttemptKey, job: Job) -> AttemptResult:
        breaker = endpoint.breaker
        # Checked before waiting for a slot, so an open breaker sheds queued work at once...
        if breaker.state == "open":
            return await self._skip(key)
        endpoint.pending += 1
        try:
            await self._take_slot(endpoint)
            try:
                # Its twin from the overdue sweeper may be at this step in another process.
                if (
                    self.claim_twins
                    and claims.may_have_twin(key)
                    and not await claims.claim_attempt(
                        self.pool, key, endpoint.merchant.timeout_s + claims.CLAIM_MARGIN_S
                    )
                ):
                    raise claims.AttemptInFlight
                # ...and again after, since it may have opened while this one waited.
                if not breaker.allow():
                    return await self._skip(key)
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

    async def _hop(self, job: Job, why: str) -> None:
        await self.publisher.retry(job, job.attempt, self.busy_delay_s)
        log.info("webhooks.deferred_busy", delay_s=self.busy_delay_s, why=why)

    async def _in_flight_elsewhere(self, job: Job) -> None:
        # Not an attempt: come back as the same step after the busy hop, and find it recorded
        # (a no-op) or its holder dead and the claim expired. Without a hop queue it is dropped:
        # the delivery stays pending, so the sweeper re-publishes it if the holder never
        # records it.
        log.info("webhooks.attempt_in_flight_elsewhere")
        if self.busy_delay_s > 0:
            await self.publisher.retry(job, job.attempt, self.busy_delay_s)

    async def _skip(self, key: store.AttemptKey) -> AttemptResult:
        return AttemptResult(Outcome.FAILED, error_class="circuit_open")

    async def _follow_up(self, job: Job, key: store.AttemptKey, plan: Plan) -> None:
        if plan.action is Action.RETRY:
            assert plan.next_attempt is not None
            await self.publisher.retry(job, plan.next_attempt, plan.delay)
        elif plan.action is Action.DEAD:
            await self.publisher.dead(job, "schedule exhausted")
            log.warning("webhooks.failed", attempts=job.attempt)
        elif plan.action is Action.PARK:
            await self.publisher.dead(job, "parked: 410 Gone")
            log.warning("webhooks.endpoint_gone")
        else:
            return  # delivered: record_attempt marked it followed up already
        await store.mark_followed_up(self.pool, key)

    # -- shutdown --------------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Wait for in-flight deliveries; cancel what is left (those messages stay unacked)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("webhooks.abandoned_in_flight", count=len(pending))
            await asyncio.wait(pending, timeout=1.0)


def _breaker_state(endpoint: Endpoint) -> Callable[[], float]:
    return lambda: float(BREAKER_STATES.get(endpoint.breaker.state, -1))


def _disabled_reason(merchant: Merchant | None, endpoint_reason: str | None) -> str | None:
    if endpoint_reason is not None:
        return f"endpoint disabled: {endpoint_reason}"
    if merchant is not None and not merchant.enabled:
        return "endpoint disabled in config"
    return None


async def run_webhook_worker(ctx: RoleContext) -> None:
    """The webhook worker until ``ctx.stop``, then a graceful shutdown."""
    settings, config, stop = ctx.settings, ctx.config, ctx.stop
    topology = Topology(settings.amqp_namespace)
    rabbitmq = ctx.dependency("rabbitmq")  # registered now: readiness knows both at once
    pool = await database.open_pool(
        settings.database_url, stop, ctx.dependency("postgres"), min_size=1, max_size=10
    )
    if pool is None:
        return
    endpoints = EndpointRegistry(config.merchants)
    worker = WebhookWorker(
        config,
        pool,
        None,
        endpoints,
        stop,
        settings.webhook_busy_delay_s,
        prefetch=settings.webhook_prefetch,
    )
    delays = (*config.webhook_schedule, settings.webhook_busy_delay_s)
    gauges = None
    sweeper = Sweeper.from_settings(pool, topology, stop, settings)
    sweeping = sweeper.start() if sweeper is not None else None
    worker.claim_twins = sweeper is not None
    if settings.metrics:
        worker.export_metrics()
        gauges = asyncio.create_task(
            refresh_periodically("webhooks", lambda: refresh_deliveries(pool), stop, 15.0)
        )

    async def session(broker: Session) -> None:
        channel = await broker.channel(prefetch=settings.webhook_prefetch)
        await declare(channel, topology.declarations(delays))
        publish_channel = await broker.channel(publisher_confirms=True)
        raw = await channel.get_underlay_channel()
        acks = ChannelAcks(raw, linger_s=_ACK_LINGER_S)
        worker.attach(
            Publisher(publish_channel, topology, settings.publish_timeout_s), broker.lost, acks
        )
        if sweeper is not None:
            sweeper.attach(broker)
        # Deliveries read straight from aiormq (runtime/delivered.py says why).
        consuming = await raw.basic_consume(
            topology.webhooks_queue, worker.on_message, no_ack=False
        )
        log.info(
            "webhooks.started", queue=topology.webhooks_queue, schedule=config.webhook_schedule
        )
        await broker.until_stopped_or_lost(stop)
        # Stop taking work first, then let deliveries in flight finish on this connection.
        with suppress(Exception):
            await raw.basic_cancel(consuming.consumer_tag or "")
        if stop.is_set():
            await worker.drain(settings.shutdown_grace_s)

    try:
        await run_sessions(
            BrokerNodes(settings.amqp_url),
            stop,
            rabbitmq,
            session,
            name="payhook-webhooks",
        )
    finally:
        for task in (gauges, sweeping):
            if task is not None:
                task.cancel()
        await worker.drain(0)
        await endpoints.close()
        await database.close_pool(pool)
        log.info("webhooks.stopped")
