"""RabbitMQ for a role: pick a live node of several, declare, and run sessions until stopped.

payhook does not use aio-pika's robust connection: it reconnects only to the address it
first used, and a role still has to notice channels the broker closed. Instead a role's
broker work is a *session* on one plain connection; when the connection or any channel the
session watches closes, for whatever reason, the session ends and the runtime opens a new one
on the next live node, with backoff, redeclaring everything. Messages that were unacked on the
lost connection are redelivered by the broker; every consumer dedupes, so nothing doubles.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from contracts.topology import Declarations
from runtime.backoff import DEFAULT_BACKOFF, Backoff, sleep_or_stop, wait_any
from runtime.errors import describe, is_broker_outage
from runtime.health import Dependency
from runtime.servers import server_name, split_urls

__all__ = ["BrokerNodes", "Session", "declare", "raw_channel", "run_sessions"]

log = structlog.get_logger("runtime")

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


class BrokerNodes:
    """The nodes of one cluster (``PAYHOOK_AMQP_URL``, comma-separated), tried in turn."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = split_urls(urls) if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no broker URL")
        # Start at a random node so processes spread over the cluster.
        self._next = random.randrange(len(self.urls))

    async def connect(
        self,
        stop: asyncio.Event,
        dependency: Dependency,
        *,
        name: str,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> AbstractConnection | None:
        """A connection to the first node that answers; ``None`` if ``stop`` came first.

        One log line per failed attempt, naming the node (never the password) and the reason.
        """
        attempt = 0
        while not stop.is_set():
            url = self.urls[self._next % len(self.urls)]
            self._next += 1
            try:
                connection = await aio_pika.connect(
                    url, client_properties={"connection_name": name}, timeout=CONNECT_TIMEOUT_S
                )
            except Exception as exc:
                if not is_broker_outage(exc):
                    raise
                dependency.down(describe(exc))
                # A full round of nodes without luck before the delay grows.
                delay = backoff.delay(attempt // len(self.urls))
                attempt += 1
                log.warning(
                    "runtime.dependency_unavailable",
                    dependency=dependency.name,
                    server=f"rabbitmq {server_name(url)}",
                    reason=describe(exc),
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                )
                await sleep_or_stop(stop, delay)
                continue
            log.info(
                "runtime.dependency_available",
                dependency=dependency.name,
                server=f"rabbitmq {server_name(url)}",
            )
            return connection
        return None


class Session:
    """One connection's lifetime; ``lost`` is set when it or a watched channel closes."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.lost = asyncio.Event()
        self.reason = "connection closed"
        connection.close_callbacks.add(self._closed)

    def _closed(self, _: Any, exc: BaseException | None = None) -> None:
        if not self.lost.is_set():
            self.reason = describe(exc) if exc is not None else "closed"
        self.lost.set()

    async def channel(
        self, *, publisher_confirms: bool = False, prefetch: int = 0
    ) -> AbstractChannel:
        """A channel whose closing (by the broker, for any reason) ends the session."""
        channel = await self.connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=publisher_confirms
        )
        channel.close_callbacks.add(self._closed)
        if prefetch:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def until_stopped_or_lost(self, stop: asyncio.Event) -> None:
        await wait_any(stop, self.lost)


async def raw_channel(channel: AbstractChannel) -> aiormq.Channel:
    """The aiormq channel under ``channel``, for publishing with ``wait=False``.

    aio-pika's ``Exchange.publish`` awaits each message's socket write while it holds the
    channel's lock, so messages in flight together go out one event-loop round trip apart,
    each with a ``Message`` object and a deadline of its own. ``basic_publish(..., wait=False)``
    queues the frames and returns the confirm; with the channel's ``on_return_raises`` a nack
    or a mandatory return still raises.
    """
    return cast(aiormq.Channel, await channel.get_underlay_channel())


async def declare(channel: AbstractChannel, declarations: Declarations) -> None:
    """Declare exchanges, queues and bindings (idempotent while the arguments match)."""
    for exchange in declarations.exchanges:
        await channel.declare_exchange(
            exchange.name, aio_pika.ExchangeType(exchange.type), durable=True
        )
    for queue in declarations.queues:
        await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
    for binding in declarations.bindings:
        queue_ = await channel.get_queue(binding.queue, ensure=False)
        await queue_.bind(binding.exchange, routing_key=binding.routing_key)


SessionBody = Callable[[Session], Coroutine[Any, Any, None]]


async def run_sessions(
    nodes: BrokerNodes,
    stop: asyncio.Event,
    dependency: Dependency,
    body: SessionBody,
    *,
    name: str,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> None:
    """Run ``body`` on a fresh connection, again and again, until ``stop``.

    ``body`` returns when ``stop`` is set or ``session.lost``; a broker error it raises ends the
    session too (logged, then reconnected). Any other exception is a bug and propagates. A body
    still running when its connection is lost is cancelled after ``CLOSE_TIMEOUT_S``.
    """
    failures = 0
    while not stop.is_set():
        connection = await nodes.connect(stop, dependency, name=name, backoff=backoff)
        if connection is None:
            return
        session = Session(connection)
        dependency.up()
        reason: str | None = None
        task = asyncio.create_task(body(session), name=f"{name}-session")
        try:
            await _until_done_or_lost(task, session)
            task.result()
            failures = 0
        except asyncio.CancelledError:
            if not task.cancelled() or not session.lost.is_set():
                raise
        except Exception as exc:
            if not is_broker_outage(exc):
                raise
            reason = describe(exc)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await close_quietly(connection)
        if stop.is_set():
            return
        dependency.down(reason or session.reason)
        delay = backoff.delay(failures)
        failures += 1
        log.warning(
            "runtime.dependency_lost",
            dependency=dependency.name,
            reason=reason or session.reason,
            reconnect_in_s=round(delay, 2),
        )
        await sleep_or_stop(stop, delay)


async def _until_done_or_lost(task: asyncio.Task[None], session: Session) -> None:
    lost = asyncio.ensure_future(session.lost.wait())
    try:
        await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            # Lost: the body should notice and return; give it a moment, then cancel it.
            await asyncio.wait([task], timeout=CLOSE_TIMEOUT_S)
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
    finally:
        lost.cancel()


async def close_quietly(connection: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await connection.close()
