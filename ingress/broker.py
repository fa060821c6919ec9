"""Publishing verified callbacks with publisher confirms, in batches.

The ingress answers a provider only after RabbitMQ confirmed the persistent, mandatory
publish that carries its callback. Callbacks that become ready in the same turn of the event
loop travel together in one AMQP message (a JSON array; a lone callback is sent as a plain
object), and every request in it awaits that message's confirm. Why batch: each persistent
confirmed message costs the broker (quorum queue) and aio-pika CPU of their own, so one
message per callback caps the ingress at the broker's confirmed-publish ceiling; a batch
divides that cost by its size (bench/ingress_ceiling.py measures both in one run). A batch
takes callbacks of any provider account (its routing key names the account only when all
are one account's, else ``MIXED_CALLBACKS_ROUTING_KEY``): batches per account packed next to
nothing where many accounts share the traffic, or several providers do (e2e at 500/s: 0.78
messages per callback). A batch smaller than ``LINGER_BELOW`` at the end of its loop turn
waits up to ``PAYHOOK_PUBLISH_LINGER_MS`` (3 ms) for company; a bigger one goes at once, so
under heavy load batches grow with the number of requests that arrive together and no time
is waited. Many batches are in flight at once; none waits for another's confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiormq
from aio_pika.abc import AbstractExchange

from contracts.callbacks import (
    CALLBACK_BATCH_TYPE,
    CALLBACK_TYPE,
    CallbackReceived,
    encode_callback,
    encode_callbacks,
)
from contracts.topology import HEADER_CORRELATION_ID, MIXED_CALLBACKS_ROUTING_KEY, Topology
from ingress.metrics import BATCH_SIZE, CONFIRMS_IN_FLIGHT
from runtime.broker import BrokerNodes, Session, declare, raw_channel, run_sessions
from runtime.errors import is_refused_publish
from runtime.health import Dependency

__all__ = ["CallbackPublisher", "PublishFailed", "Unencodable"]


# A batch that holds fewer callbacks than this at the end of its loop turn waits up to the
# linger (``PAYHOOK_PUBLISH_LINGER_MS``) for more: at a few hundred callbacks/s per process
# every callback went in a message of its own (the broker's dearest work), while under heavy
# load batches this big form in one turn and waiting would only add latency (and cut what a
# fixed number of connections can send: 64 connections at 6,000/s lost 7 % to a fixed 3 ms).
LINGER_BELOW = 8


class PublishFailed(Exception):
    """The broker did not confirm: the provider must not get its acknowledgement."""


class _Batch:
    __slots__ = ("callbacks", "confirmed")

    def __init__(self, confirmed: asyncio.Future[None]) -> None:
        self.callbacks: list[CallbackReceived] = []
        self.confirmed = confirmed


class CallbackPublisher:
    def __init__(
        self,
        amqp_url: str,
        topology: Topology,
        *,
        timeout_s: float,
        max_batch: int = 128,
        linger_s: float = 0.0,
        dependency: Dependency | None = None,
        metrics: bool = False,
    ) -> None:
        self._metrics = metrics
        self._nodes = BrokerNodes(amqp_url)
        self._topology = topology
        self._timeout_s = timeout_s
        self._max_batch = max(1, max_batch)
        self._linger_s = max(0.0, linger_s)
        self._dependency = dependency or Dependency("ingress.rabbitmq")
        self._exchange: AbstractExchange | None = None
        self._channel: aiormq.Channel | None = None
        self._session: Session | None = None
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._sessions: asyncio.Task[None] | None = None
        self._filling: _Batch | None = None  # the batch still taking callbacks
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self, wait_s: float = 3.0) -> None:
        """Connect in the background; wait up to ``wait_s`` for the first connection.

        Never fails for want of a broker: the ingress listens anyway and answers 503 (and
        ``/readyz`` false) until a node answers.
        """
        self._sessions = asyncio.create_task(
            run_sessions(
                self._nodes, self._stop, self._dependency, self._run, name="payhook-ingress"
            ),
            name="ingress-publisher",
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._connected.wait()

    async def _run(self, session: Session) -> None:
        # on_return_raises (with confirms): a mandatory publish no queue took fails, not vanishes.
        channel = await session.channel(publisher_confirms=True)
        await declare(channel, self._topology.ingress_declarations())
        self._exchange = await channel.get_exchange(self._topology.callbacks_exchange, ensure=False)
        self._channel = await raw_channel(channel)
        self._session = session
        self._connected.set()
        try:
            await session.until_stopped_or_lost(self._stop)
        finally:
            self._exchange, self._channel, self._session = None, None, None
            self._connected.clear()

    async def close(self) -> None:
        if self._filling is not None:
            self._send(self._filling)  # a lingering batch goes now, while the session is up
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=self._timeout_s)
        self._stop.set()
        if self._sessions is not None:
            await self._sessions

    @property
    def ready(self) -> bool:
        session = self._session
        return self._exchange is not None and session is not None and not session.lost.is_set()

    async def publish(self, callback: CallbackReceived) -> None:
        """Return once a confirmed message holds ``callback``; else raise ``PublishFailed``."""
        if self._exchange is None or not self.ready:
            raise PublishFailed("broker not connected")
        batch = self._filling
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._filling = _Batch(loop.create_future())
            # Runs after every handler already runnable in this turn has added its callback.
            loop.call_soon(self._end_of_turn, batch)
        batch.callbacks.append(callback)
        if len(batch.callbacks) >= self._max_batch:
            self._send(batch)
        # No timeout of its own: ``_publish_batch`` resolves the batch within the publish
        # timeout whatever happens (one timer per message, not one per request).
        await _confirmation(batch, callback)

    def _end_of_turn(self, batch: _Batch) -> None:
        """Send a batch that filled in its loop turn; let a small one wait for company."""
        if self._linger_s > 0 and len(batch.callbacks) < LINGER_BELOW:
            asyncio.get_running_loop().call_later(self._linger_s, self._send, batch)
        else:
            self._send(batch)

    def _send(self, batch: _Batch) -> None:
        if self._filling is not batch:
            return  # already sent (it filled up before its turn came)
        self._filling = None
        task = asyncio.create_task(self._publish_batch(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _routing_key(self, callbacks: list[CallbackReceived]) -> str:
        """The provider account's key when the message carries one account's callbacks."""
        first = callbacks[0]
        if all(c.provider == first.provider and c.account == first.account for c in callbacks):
            return self._topology.callback_routing_key(first.provider, first.account)
        return MIXED_CALLBACKS_ROUTING_KEY

    async def _publish_batch(self, batch: _Batch) -> None:
        """Publish ``batch`` as one message and resolve its future, whatever happens.

        Encoding is part of what can fail: a callback the codec cannot write (the edge let
        through something it should have refused: a bug) must fail at once and alone, not
        take its batch with it nor leave the waiters to the publish timeout.
        """
        try:
            try:
                body, properties = _message(batch.callbacks)
            except Exception:  # whatever the encoder raises, the message cannot be built
                rest = _split(batch)  # fails the unencodable callbacks now, keeps the others
                if rest is None:
                    return
                batch = rest  # from here on, the rest is what must be resolved
                body, properties = _message(batch.callbacks)
            channel = self._channel
            # Returns Basic.Ack; a Nack or a mandatory return raises (on_return_raises).
            if channel is None:
                raise ConnectionRefusedError("broker connection lost")
            if self._metrics:
                BATCH_SIZE.observe(len(batch.callbacks))
                CONFIRMS_IN_FLIGHT.inc()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await channel.basic_publish(
                        body,
                        exchange=self._topology.callbacks_exchange,
                        routing_key=self._routing_key(batch.callbacks),
                        properties=properties,
                        mandatory=True,
                        wait=False,  # see runtime.broker.raw_channel
                    )
            except TimeoutError:
                raise PublishFailed("no confirm within the publish timeout") from None
            finally:
                if self._metrics:
                    CONFIRMS_IN_FLIGHT.dec()
        except Exception as exc:  # any failure means "not durably accepted"
            if is_refused_publish(exc) and self._session is not None:
                # 3.10 keeps refusing on this channel after a leader loss: renew the session.
                self._session.lost.set()
            failed = exc if isinstance(exc, PublishFailed) else None
            _fail(batch.confirmed, failed or PublishFailed(f"{type(exc).__name__}: {exc}"))
        else:
            batch.confirmed.set_result(None)
        finally:
            if not batch.confirmed.done():  # cancelled (shutdown): the waiters must not hang
                _fail(batch.confirmed, PublishFailed("publish cancelled"))


class Unencodable(PublishFailed):
    """The callback cannot be written as a message (the codec refused it).

    Not the broker's fault and not worth retrying as is: provider validation let through
    something the contract cannot carry. The provider should get a 5xx and resend once the
    bug is fixed.
    """

    def __init__(self, callback_id: str, error: BaseException) -> None:
        super().__init__(
            f"callback {callback_id} cannot be encoded: {type(error).__name__}: {error}"
        )
        self.callback_id = callback_id
        self.error = error


class _Split(Exception):
    """A batch that could not be encoded whole: each callback's own outcome, by identity."""

    def __init__(self, outcomes: dict[int, asyncio.Future[None]]) -> None:
        super().__init__("batch split: callbacks encoded one by one")
        self.outcomes = outcomes


async def _confirmation(batch: _Batch, callback: CallbackReceived) -> None:
    """Wait for the confirm of the message that holds ``callback``: its batch's, or after a
    split, its own outcome (an immediate ``Unencodable``, or the confirm of the rest)."""
    try:
        await asyncio.shield(batch.confirmed)
    except _Split as split:
        await asyncio.shield(split.outcomes[id(callback)])


def _message(callbacks: list[CallbackReceived]) -> tuple[bytes, aiormq.spec.Basic.Properties]:
    """The persistent message carrying ``callbacks``: a plain object for one, else an array."""
    if len(callbacks) == 1:
        only = callbacks[0]
        return encode_callback(only), aiormq.spec.Basic.Properties(
            delivery_mode=2,  # persistent
            content_type="application/json",
            message_id=only.id,
            correlation_id=only.correlation_id or None,
            headers={HEADER_CORRELATION_ID: only.correlation_id},
            message_type=CALLBACK_TYPE,
        )
    return encode_callbacks(callbacks), aiormq.spec.Basic.Properties(
        delivery_mode=2,
        content_type="application/json",
        # Each callback inside carries its own deterministic id; this only names the message
        # for broker tooling.
        message_id=uuid.uuid4().hex,
        message_type=CALLBACK_BATCH_TYPE,
    )


def _split(batch: _Batch) -> _Batch | None:
    """Encode ``batch``'s callbacks one by one: fail the ones that cannot be encoded now,
    and return a batch of the others to publish in their place (``None`` if none is left).

    ``batch.confirmed`` is resolved here with a ``_Split`` that tells each waiter where its
    outcome is, so an unencodable callback's request is answered without waiting for anything.
    """
    loop = asyncio.get_running_loop()
    rest = _Batch(loop.create_future())
    outcomes: dict[int, asyncio.Future[None]] = {}
    for callback in batch.callbacks:
        try:
            encode_callback(callback)
        except Exception as exc:
            outcome: asyncio.Future[None] = loop.create_future()
            _fail(outcome, Unencodable(callback.id, exc))
            outcomes[id(callback)] = outcome
        else:
            rest.callbacks.append(callback)
            outcomes[id(callback)] = rest.confirmed
    _fail(batch.confirmed, _Split(outcomes))
    if rest.callbacks:
        return rest
    rest.confirmed.cancel()  # nobody awaits it
    return None


def _fail(future: asyncio.Future[None], error: Exception) -> None:
    future.set_exception(error)
    future.exception()  # retrieved here: the waiters may have timed out already
