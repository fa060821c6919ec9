"""The webhook worker: consume ``<ns>.webhooks``, deliver, schedule the next attempt.

Two kinds of message arrive on the queue. A message without ``x-payhook-merchant`` is a fresh
event from the events exchange: the worker finds the merchant subscribed to it (if none, it
is acked and forgotten). A message with the header is a retry (back from a delay queue) or an
operator's replay, for that merchant only; ``x-payhook-attempt`` says which step of the
schedule it is (default 1) and ``x-payhook-round`` which replay it belongs to (default 0).

Each (event, merchant) is one ``Job`` for ``deliver.Deliverer``, which makes the decision (its
docstring lists the steps); this module only decodes, keeps two copies of one delivery
apart, and settles the message once ``deliver`` returned.

Outcomes are settled by ``runtime.consume``: a Postgres or RabbitMQ outage holds the message
and retries it once the server is back (or leaves it to the broker if the connection went);
an unexpected error requeues it, and the queue's delivery limit dead-letters a message that
keeps failing to ``<ns>.webhooks.dead``, so nothing loops for ever.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

import asyncpg
import structlog
from aiormq.abc import DeliveredMessage

from contracts.config import Config
from contracts.errors import DecodeError
from contracts.events import CloudEvent, decode_event
from contracts.topology import HEADER_ATTEMPT, HEADER_CORRELATION_ID, HEADER_MERCHANT, Topology
from runtime import database
from runtime.acks import ChannelAcks
from runtime.broker import BrokerNodes, Session, declare, run_sessions
from runtime.consume import handle_message
from runtime.delivered import RawDelivery
from runtime.metrics import refresh_periodically
from runtime.process import RoleContext
from workers.metrics import BREAKER_STATES, WEBHOOK_BREAKER, refresh_deliveries
from workers.webhooks.deliver import Deliverer, DeliveryStore
from workers.webhooks.delivery import Endpoint, EndpointRegistry
from workers.webhooks.messages import HEADER_ROUND, Job, Publisher, header_int, header_str
from workers.webhooks.sweeper import Sweeper

__all__ = ["WebhookWorker", "run_webhook_worker", "subscribed"]

log = structlog.get_logger(__name__)

# The ack after a delivered attempt waits this long for company (the attempt's write waits as
# long: ``deliver.RECORD_LINGER_S``): at a few hundred webhooks/s each finishes in a loop turn
# of its own, so batching by turn alone left one ack frame per webhook. A crash in between
# redelivers a message whose attempt is found recorded.
_ACK_LINGER_S = 0.005


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
        self.pool = pool
        self._publisher = publisher
        self.endpoints = endpoints
        self.stop = stop
        # Set when the broker session the current messages came from is lost.
        self.lost = asyncio.Event()
        # Acks of the current consuming channel, batched (None: one ack per message).
        self.acks: ChannelAcks | None = None
        self._locks = _KeyedLocks()
        self._tasks: set[asyncio.Task[None]] = set()
        self.deliveries = DeliveryStore(pool)
        # An endpoint may hold up to half the prefetch (at least twice its max_in_flight) in
        # waiting or running deliveries before further ones hop through the broker: a fast
        # merchant is served at full speed, a hanging one cannot take more than half.
        self.deliverer = Deliverer(
            config, self.deliveries, endpoints, busy_delay_s, wait_limit=prefetch // 2
        )

    @property
    def claim_twins(self) -> bool:
        """Set while the overdue sweeper runs: attempts that may have its twin claim first."""
        return self.deliverer.claim_twins

    @claim_twins.setter
    def claim_twins(self, value: bool) -> None:
        self.deliverer.claim_twins = value

    def export_metrics(self) -> None:
        """Count attempts, and read each merchant's breaker state at every scrape."""
        self.deliverer.metrics = True
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
            if self.config.webhook_schedule[0] > 0:
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
        await self.deliveries.open(job)
        await self.publisher.retry(job, 1, self.config.webhook_schedule[0])

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
                await self.deliverer.deliver(job, self.publisher)
            finally:
                self._locks.release(key)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

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
