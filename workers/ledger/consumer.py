"""The ledger worker: consume ``<ns>.ledger`` in batches, apply, commit, then ack.

A message holds one callback, or several that the ingress published together. Messages are
collected into batches of up to ``ledger_batch_size`` callbacks (or whatever arrived within
``ledger_batch_wait_ms`` of the first), applied in one transaction (``apply.py``), and
acked only after the commit, with one ``multiple`` ack up to the batch's last delivery tag.
Two batches may be in flight at once (one committing while the next is decided), but they
settle (ack/nack) strictly in delivery order, so a ``multiple`` ack never covers a message of a
batch that has not committed.

Failures:
- A body that is not a ``CallbackReceived`` is poison: rejected at once, without requeue; the
  queue's dead-letter exchange moves it to ``<ns>.ledger.dead`` (the log line says why).
- A message with a callback that fails on its own (after the batch fell back to one
  transaction per callback) is nacked with requeue; the quorum queue counts deliveries. On its
  last allowed delivery the worker publishes it to the dead-letter exchange itself, with
  ``x-payhook-error`` saying why, and acks it. ``payhook ledger replay-dead`` puts dead
  messages back after a fix.
- A lost database connection is nobody's fault: the batch is retried until the database is
  back (or the worker stops, leaving the messages unacked for redelivery).
- A lost broker connection ends the session (``runtime.broker.run_sessions``): what was
  waiting in the inbox is dropped (the broker redelivers it), batches in flight still commit
  (their acks are lost, so their redelivery is deduped), and the worker subscribes again on
  the next live node.

Shutdown: the consumers are cancelled first (no more deliveries), then the batches in flight
get ``PAYHOOK_SHUTDOWN_GRACE_S`` to commit and ack, then whatever is left is cancelled and the
connection closed, which hands every unacked message back to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustChannel
from aiormq.abc import DeliveredMessage

from contracts.callbacks import decode_callbacks
from contracts.config import Config, Settings
from contracts.errors import DecodeError
from contracts.topology import HEADER_CORRELATION_ID, Topology
from runtime import database
from runtime.broker import BrokerNodes, Session, declare, run_sessions
from runtime.errors import describe, is_database_outage
from runtime.health import Dependency
from runtime.metrics import refresh_periodically
from runtime.process import RoleContext
from workers.ledger.apply import ApplyResult, Incoming, Policy, apply_each
from workers.ledger.orders import consume_orders
from workers.metrics import LedgerMetrics, refresh_attention
from workers.outbox import CommittedEvents

__all__ = [
    "HEADER_ERROR",
    "HEADER_FAILED_AT",
    "LedgerWorker",
    "decode_message",
    "run_ledger_worker",
]

log = structlog.get_logger(__name__)

HEADER_ERROR = "x-payhook-error"
HEADER_FAILED_AT = "x-payhook-failed-at"
_DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues on redelivery
_PIPELINE_DEPTH = 2
_DB_RETRY_S = (0.5, 1.0, 2.0, 5.0)
_SETTLE_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelInvalidStateError,
)


def _headers(message: DeliveredMessage) -> dict[str, Any]:
    return dict(message.header.properties.headers or {})


def decode_message(message: DeliveredMessage) -> list[Incoming]:
    """Decode a ledger message (one callback, or the ingress's batch); ``DecodeError`` = poison."""
    decoded = decode_callbacks(message.body)  # orjson: valid UTF-8 JSON, or DecodeError
    header = (message.header.properties.headers or {}).get(HEADER_CORRELATION_ID)
    correlation = header.decode() if isinstance(header, bytes) else str(header or "")
    return [
        Incoming(callback, callback.id, body, correlation or callback.correlation_id)
        for callback, body in decoded
    ]


@dataclass(slots=True)
class _Batch:
    messages: list[DeliveredMessage] = field(default_factory=list)
    items: list[Incoming] = field(default_factory=list)
    # Per message, how many of ``items`` it carried (the ingress packs several per message).
    spans: list[int] = field(default_factory=list)
    ordered: bool = True  # one channel, increasing tags: a multiple ack is exact


class LedgerWorker:
    """Batches, applies and settles ledger messages; ``on_message`` is the consumer callback."""

    def __init__(
        self,
        settings: Settings,
        config: Config,
        pool: asyncpg.Pool[Any],
        topology: Topology,
        dead_exchange: AbstractExchange | None = None,
        postgres: Dependency | None = None,
    ) -> None:
        self.pool = pool
        self.postgres = postgres or Dependency("ledger.postgres", is_up=True)
        self.metrics = LedgerMetrics() if settings.metrics else None
        # Publishing its own events (``ledger_publishes_events``), the worker does not wake
        # the relay: ``events.exchange`` is set per broker session by ``run_ledger_worker``.
        self.events = (
            CommittedEvents(pool, self._spawn, self.metrics.published if self.metrics else None)
            if settings.ledger_publishes_events
            else None
        )
        self.policy = replace(Policy.from_config(config), notify_relay=self.events is None)
        self.topology = topology
        self.dead_exchange = dead_exchange
        self.batch_size = max(1, settings.ledger_batch_size)
        self.batch_wait = max(0.0, settings.ledger_batch_wait_ms / 1000)
        self.grace = settings.shutdown_grace_s
        self.totals = ApplyResult()
        self._inbox: deque[DeliveredMessage] = deque()
        self._wake = asyncio.Event()  # a message arrived, a batch finished, or stop
        self._in_flight = 0
        self._settled: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: object = None
        self._last_tag = 0
        self._multiple_ok = True  # cleared for good once a batch is abandoned unacked

    async def on_message(self, message: DeliveredMessage) -> None:
        self._inbox.append(message)
        self._wake.set()

    def drop_inbox(self) -> None:
        """Forget deliveries not yet batched (their connection is gone: they come again)."""
        self._inbox.clear()

    async def drain(self) -> None:
        """Let batches in flight finish (within the grace), cancelling what is left."""
        await self._drain()

    async def subscribe(
        self, channel: AbstractChannel, queue: str
    ) -> Callable[[], Awaitable[None]]:
        """Consume ``queue`` on ``channel``; returns the coroutine function that stops it.

        Deliveries are taken from aio-pika's underlying aiormq channel: wrapping each one in an
        ``IncomingMessage`` (plus a task) cost about 40 us of the worker's CPU per message,
        measured, which is a sixth of its budget at 5,000 callbacks/s. The robust channel
        still reconnects, restores QoS and calls ``reopen_callbacks``, where we subscribe again.
        """
        tags: list[tuple[Any, str]] = []

        async def consume(*_: Any) -> None:
            raw = await channel.get_underlay_channel()
            ok = await raw.basic_consume(queue, self.on_message, no_ack=False)
            tags.append((raw, ok.consumer_tag or ""))

        await consume()
        robust = channel if isinstance(channel, AbstractRobustChannel) else None
        if robust is not None:
            robust.reopen_callbacks.add(consume)

        async def cancel() -> None:
            if robust is not None:
                robust.reopen_callbacks.discard(consume)
            raw, tag = tags[-1]
            with contextlib.suppress(*_SETTLE_ERRORS):
                await raw.basic_cancel(tag)

        return cancel

    async def run(self, stop: asyncio.Event) -> None:
        """Batch and apply until ``stop``; then let in-flight batches finish (with a grace).

        A batch is sent off when a pipeline slot is free and it is full or its first message
        has waited ``ledger_batch_wait_ms``; while both slots are busy it keeps filling, so
        batches grow with the load (few messages each when idle, full ones under a backlog).
        """

        async def watch_stop() -> None:
            await stop.wait()
            self._wake.set()

        watcher = asyncio.create_task(watch_stop())
        batch, first = _Batch(), 0.0
        try:
            while not stop.is_set():
                self._wake.clear()
                while self._inbox and len(batch.items) < self.batch_size:
                    if not batch.messages:
                        first = time.monotonic()
                    await self._add(batch, self._inbox.popleft())
                timeout: float | None = None
                if batch.messages:
                    full = len(batch.items) >= self.batch_size
                    due = first + self.batch_wait - time.monotonic()
                    if self._in_flight < _PIPELINE_DEPTH and (full or due <= 0):
                        self._dispatch(batch, stop)
                        batch = _Batch()
                        continue
                    if self._in_flight < _PIPELINE_DEPTH:
                        timeout = due
                if self._inbox and len(batch.items) < self.batch_size:
                    continue  # more arrived while _add awaited a reject
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            await self._drain()

    def _dispatch(self, batch: _Batch, stop: asyncio.Event) -> None:
        self._in_flight += 1
        previous, self._settled = self._settled, asyncio.get_running_loop().create_future()
        self._spawn(self._process(batch, previous, self._settled, stop))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that ``drain`` waits for (within the grace)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        # Until none is left: a batch finishing in the grace starts its events' confirm task.
        deadline = time.monotonic() + self.grace
        while self._tasks:
            _, pending = await asyncio.wait(
                set(self._tasks), timeout=max(0.0, deadline - time.monotonic())
            )
            if pending and time.monotonic() >= deadline:
                for task in pending:
                    task.cancel()  # its messages stay unacked: redelivered to the next consumer
                await asyncio.wait(pending)
                return

    async def _add(self, batch: _Batch, message: DeliveredMessage) -> None:
        tag = message.delivery_tag or 0
        if message.channel is not self._channel or tag <= self._last_tag:
            # A reconnect (new channel, tags restart) or an out-of-order arrival.
            if self._channel is not None:
                batch.ordered = False
            self._channel = message.channel
        self._last_tag = tag
        try:
            items = decode_message(message)
        except DecodeError as exc:
            log.error(
                "ledger.poison_message",
                reason=str(exc),
                message_id=message.header.properties.message_id,
                delivery_tag=tag,
            )
            with contextlib.suppress(*_SETTLE_ERRORS):
                await message.channel.basic_reject(tag, requeue=False)
            return
        batch.messages.append(message)
        batch.items.extend(items)
        batch.spans.append(len(items))

    async def _process(
        self,
        batch: _Batch,
        previous: asyncio.Future[None] | None,
        settled: asyncio.Future[None],
        stop: asyncio.Event,
    ) -> None:
        try:
            started = time.perf_counter()
            outcome = await self._apply(batch.items, stop)
            took = time.perf_counter() - started
            if previous is not None:
                await asyncio.shield(previous)
            if outcome is None:
                self._multiple_ok = False  # abandoned unacked: later multiple acks would cover it
                return
            result, failures = outcome
            # Before the ack, in settle order: events of one payment reach the broker in the
            # order its batches committed.
            if self.events is not None:
                await self.events.publish(result.outbox)
            self.totals.add(replace(result, outbox=[], attention=[]))  # counts, not rows
            if self.metrics is not None:
                self.metrics.batch(
                    dict(result.outcomes),
                    result.duplicates,
                    sum(1 for why in failures if why is not None),
                    len(batch.items),
                    took,
                    batch.items[0].callback.received_at if batch.items else None,
                )
            await self._settle(batch, failures)
            self._log(result, failures, batch.items)
        finally:
            if not settled.done():
                settled.set_result(None)
            self._in_flight -= 1
            self._wake.set()

    async def _apply(
        self, items: Sequence[Incoming], stop: asyncio.Event
    ) -> tuple[ApplyResult, list[str | None]] | None:
        attempt = 0
        while True:
            try:
                result = await apply_each(self.pool, items, self.policy)
            except Exception as exc:
                if not is_database_outage(exc):  # a bug, not the database: fail the messages
                    log.exception("ledger.batch_crashed", size=len(items))
                    return ApplyResult(), [f"{type(exc).__name__}: {exc}"[:500]] * len(items)
                # The database went away: nobody's fault, wait for it.
                delay = _DB_RETRY_S[min(attempt, len(_DB_RETRY_S) - 1)]
                attempt += 1
                self.postgres.down(describe(exc))
                log.warning("ledger.database_unavailable", reason=describe(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return None
                continue
            self.postgres.up()
            return result

    async def _settle(self, batch: _Batch, failures: Sequence[str | None]) -> None:
        ok: list[DeliveredMessage] = []
        start = 0
        for message, span in zip(batch.messages, batch.spans, strict=True):
            end = start + span
            failed = [
                (item, why)
                for item, why in zip(batch.items[start:end], failures[start:end], strict=True)
                if why is not None
            ]
            start = end
            if not failed:
                ok.append(message)
            else:
                # Its other callbacks are committed (each alone, by the fallback): a redelivery
                # or a replay of the whole message finds them as duplicates.
                await self._fail(message, *failed[0])
        if not ok:
            return
        try:
            if batch.ordered and self._multiple_ok:
                await ok[-1].channel.basic_ack(_tag(ok[-1]), multiple=True)
            else:
                for message in ok:
                    await message.channel.basic_ack(_tag(message))
        except _SETTLE_ERRORS as exc:
            # The channel went away after the commit: the broker redelivers, dedupe absorbs it.
            log.warning("ledger.ack_lost", error=repr(exc), count=len(ok))

    async def _fail(self, message: DeliveredMessage, item: Incoming, why: str) -> None:
        raw = _headers(message).get(_DELIVERY_COUNT)
        count = raw if isinstance(raw, int) else 0
        last = count + 1 >= self.topology.ledger_delivery_limit
        with structlog.contextvars.bound_contextvars(
            callback_id=item.id, correlation_id=item.correlation_id
        ):
            log.error(
                "ledger.message_failed",
                error=why,
                delivery_count=count,
                dead_lettered=last,
                provider=item.callback.provider,
                account=item.callback.account,
            )
        try:
            if last and self.dead_exchange is not None:
                props = message.header.properties
                headers = _headers(message)
                headers[HEADER_ERROR] = why
                headers[HEADER_FAILED_AT] = datetime.now(UTC).isoformat()
                await self.dead_exchange.publish(
                    aio_pika.Message(
                        message.body,
                        headers=headers,
                        content_type=props.content_type,
                        message_id=props.message_id,
                        correlation_id=props.correlation_id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=self.topology.ledger_queue,
                )
                await message.channel.basic_ack(_tag(message))
                if self.metrics is not None:
                    self.metrics.dead_lettered()
            else:
                await message.channel.basic_nack(_tag(message), requeue=True)
        except _SETTLE_ERRORS as exc:
            log.warning("ledger.settle_lost", error=repr(exc))

    def _log(
        self, result: ApplyResult, failures: Sequence[str | None], items: Sequence[Incoming] = ()
    ) -> None:
        for item, verdict in result.attention:
            if verdict.outcome.value in ("stale", "late"):
                continue
            with structlog.contextvars.bound_contextvars(
                callback_id=item.id, correlation_id=item.correlation_id
            ):
                log.warning(
                    "ledger.callback_needs_attention",
                    outcome=verdict.outcome.value,
                    reason=verdict.reason,
                    provider=item.callback.provider,
                    account=item.callback.account,
                    transaction_id=item.callback.transaction_id,
                )
        # One line per batch, not per callback: at full speed that is ~20 lines/s instead of
        # ~10,000, and every correlation id is still on a line, so a callback can be followed
        # from the ingress (ingress.callback_accepted) to the merchant (webhooks.attempted).
        log.info(
            "ledger.batch_applied",
            size=len(items),
            recorded=result.recorded,
            duplicates=result.duplicates,
            events=result.events,
            entries=result.entries,
            failed=sum(1 for why in failures if why is not None),
            outcomes=dict(result.outcomes),
            correlation_ids=sorted({item.correlation_id for item in items if item.correlation_id}),
        )


def _tag(message: DeliveredMessage) -> int:
    return message.delivery_tag or 0


async def run_ledger_worker(ctx: RoleContext) -> None:
    """The ledger worker (and the orders-queue consumer) until ``ctx.stop``."""
    settings, config, stop = ctx.settings, ctx.config, ctx.stop
    topology = Topology(settings.amqp_namespace)
    postgres = ctx.dependency("postgres")
    rabbitmq = ctx.dependency("rabbitmq")  # registered now: readiness knows both at once
    # Two batches in flight, the orders consumer, and marking published events.
    pool = await database.open_pool(settings.database_url, stop, postgres, min_size=2, max_size=5)
    if pool is None:
        return
    worker = LedgerWorker(settings, config, pool, topology, postgres=postgres)
    batches_stop = asyncio.Event()
    batching = asyncio.create_task(worker.run(batches_stop), name="ledger-batches")
    gauges = (
        asyncio.create_task(
            refresh_periodically("ledger", lambda: refresh_attention(pool), stop, 15.0)
        )
        if settings.metrics
        else None
    )

    async def session(broker: Session) -> None:
        control = await broker.channel(publisher_confirms=True)
        await declare(control, topology.declarations(config.webhook_schedule))
        worker.dead_exchange = await control.get_exchange(
            topology.ledger_dead_exchange, ensure=False
        )
        if worker.events is not None:
            # A channel of its own: its confirms are not held up behind a dead-letter publish.
            events = await broker.channel(publisher_confirms=True)
            worker.events.exchange = await events.get_exchange(
                topology.events_exchange, ensure=False
            )
        channel = await broker.channel(prefetch=settings.ledger_prefetch)
        orders_channel = await broker.channel(prefetch=32)
        cancel_callbacks = await worker.subscribe(channel, topology.ledger_queue)
        cancel_orders = await consume_orders(
            orders_channel, topology, pool, config, stop, broker.lost
        )
        log.info(
            "ledger.started",
            queue=topology.ledger_queue,
            batch_size=worker.batch_size,
            prefetch=settings.ledger_prefetch,
        )
        await broker.until_stopped_or_lost(stop)
        if broker.lost.is_set():
            if worker.events is not None:
                worker.events.exchange = None
            worker.drop_inbox()
            return
        # Stop taking work first, then let what is in flight commit and ack on this channel.
        await cancel_callbacks()
        await cancel_orders()
        batches_stop.set()
        await batching
        if worker.events is not None:
            worker.events.exchange = None

    try:
        await run_sessions(
            BrokerNodes(settings.amqp_url),
            stop,
            rabbitmq,
            session,
            name="payhook-ledger",
        )
    finally:
        if gauges is not None:
            gauges.cancel()
        batches_stop.set()
        if not batching.done():
            await asyncio.wait([batching], timeout=settings.shutdown_grace_s + 1)
            batching.cancel()
        log.info(
            "ledger.stopped",
            recorded=worker.totals.recorded,
            duplicates=worker.totals.duplicates,
        )
        await database.close_pool(pool)
