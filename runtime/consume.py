"""Run a message handler and settle the message by its outcome, in one place.

    handler returns                 → ack
    raises RetryLater(delay)        → wait ``delay``, nack with requeue (counts as a delivery)
    raises PermanentFailure(reason) → reject without requeue: the queue dead-letters it
    raises an outage (Postgres or RabbitMQ away; a refused publish also renews the session)
                                    → keep the message and run the handler again after a
                                      backoff, for as long as it takes; not counted against
                                      the message. If the role stops or the channel is lost
                                      meanwhile, the message is left unacked: the broker
                                      redelivers it to whoever consumes next.
    raises anything else (a bug)    → logged with its traceback, nack with requeue after a
                                      pause; the queue's delivery limit dead-letters it in the
                                      end, so a poison message cannot loop for ever.

Handlers must therefore be idempotent: a message may run again after a crash or an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import aiormq
import structlog

from runtime.backoff import DEFAULT_BACKOFF, Backoff, sleep_or_stop
from runtime.errors import PermanentFailure, RetryLater, describe, is_outage, is_refused_publish

__all__ = ["BUG_REQUEUE_PAUSE_S", "Delivery", "Settler", "handle_message", "settle"]

log = structlog.get_logger("runtime")

BUG_REQUEUE_PAUSE_S = 1.0


class Delivery(Protocol):
    """What settling needs of a message: aio-pika's ``IncomingMessage`` has it, and so has
    ``runtime.delivered.RawDelivery`` (a delivery read straight from aiormq)."""

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def channel(self) -> aiormq.abc.AbstractChannel: ...

    async def ack(self) -> None: ...

    async def nack(self, *, requeue: bool = True) -> None: ...

    async def reject(self, *, requeue: bool = False) -> None: ...


M = TypeVar("M", bound=Delivery)


class Settler(Protocol):
    """How a message is settled; ``runtime.acks.ChannelAcks`` batches the acks."""

    async def ack(self, message: Delivery) -> None: ...

    async def nack(self, message: Delivery, *, requeue: bool) -> None: ...

    async def reject(self, message: Delivery, *, requeue: bool) -> None: ...


class _EachMessage:
    """One frame per message: the message's own ack/nack/reject."""

    async def ack(self, message: Delivery) -> None:
        await message.ack()

    async def nack(self, message: Delivery, *, requeue: bool) -> None:
        await message.nack(requeue=requeue)

    async def reject(self, message: Delivery, *, requeue: bool) -> None:
        await message.reject(requeue=requeue)


_EACH = _EachMessage()


async def settle(action: Awaitable[object]) -> bool:
    """Ack/nack/reject; on a channel lost meanwhile the broker redelivers (handlers dedupe)."""
    try:
        await action
    except Exception as exc:  # any failure here means "the broker redelivers"
        log.info("runtime.settle_lost", error=describe(exc))
        return False
    return True


async def handle_message(
    message: M,
    handler: Callable[[M], Awaitable[None]],
    *,
    stop: asyncio.Event,
    lost: asyncio.Event,
    backoff: Backoff = DEFAULT_BACKOFF,
    settler: Settler = _EACH,
) -> None:
    attempt = 0
    while True:
        try:
            await handler(message)
        except RetryLater as exc:
            log.info("runtime.message_retry_later", reason=exc.reason, delay_s=exc.delay_s)
            await sleep_or_stop(stop, exc.delay_s)
            await settle(settler.nack(message, requeue=True))
        except PermanentFailure as exc:
            log.error(
                "runtime.message_dead_lettered", reason=exc.reason, message_id=message.message_id
            )
            await settle(settler.reject(message, requeue=False))
        except Exception as exc:
            if not is_outage(exc):
                log.exception("runtime.message_failed", message_id=message.message_id)
                await sleep_or_stop(stop, BUG_REQUEUE_PAUSE_S)
                await settle(settler.nack(message, requeue=True))
                return
            if is_refused_publish(exc):
                lost.set()  # a poisoned channel: start a new session (see is_refused_publish)
            if stop.is_set() or lost.is_set() or message.channel.is_closed:
                log.info("runtime.message_left_for_redelivery", reason=describe(exc))
                return
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning(
                "runtime.message_waiting_for_dependency",
                reason=describe(exc),
                attempt=attempt,
                retry_in_s=round(delay, 2),
            )
            if await sleep_or_stop(stop, delay):
                return
            continue
        else:
            await settle(settler.ack(message))
        return
