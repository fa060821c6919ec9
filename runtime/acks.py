"""Acks of one channel sent together: one ``multiple`` ack for every message settled so far.

A consumer that acks each message costs the broker one ``basic.ack`` frame and one settle
command to the quorum queue per message; with ~250 messages in flight and a fast merchant,
most of them finish within one turn of the event loop. ``ChannelAcks`` collects the acks
made in one turn and sends, at the end of it (``call_soon``), a single ``multiple`` ack up to
the highest delivery tag below which every message is settled, plus one plain ack for each
acked message above the first one still in flight.

Correctness of ``multiple``: it settles every unacked tag up to the one it names, so it may
only be sent once every earlier delivery of the channel is settled by us — acked (in this
batch) or nacked/rejected already (those frames went out before, in order, and the broker no
longer holds them). A message still being handled (a hanging merchant) stops the prefix: the
acks after it go out one by one, at once, so nothing waits for a slow neighbour and no
prefetch slot is held longer than before. The tag a ``multiple`` ack names is always one the
broker still holds unacked (an unknown tag would close the channel).

"Every earlier delivery" is counted in tag numbers, not in the order deliveries reach
``received``: a channel numbers its deliveries 1, 2, 3 …, but aio-pika hands each to the
consumer in a task of its own, so tag 101 can be registered before tag 100. Walking the tags in
arrival order once named 101 while 100 was in flight (and later closed the channel with
PRECONDITION_FAILED, "unknown delivery tag", when 100 was acked: seen in bench/webhook_drain).
So the run stops at the first tag number that is not settled or not registered yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage

__all__ = ["ChannelAcks"]

log = structlog.get_logger("runtime")

_IN_FLIGHT, _ACK, _SETTLED = 0, 1, 2


class ChannelAcks:
    """Batched acks for the deliveries of one fresh channel that only this consumer uses."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel
        # delivery tag -> state of the deliveries not yet acked; tags below ``_next`` are
        # all settled (the channel numbers its deliveries 1, 2, 3 ...).
        self._tags: dict[int, int] = {}
        self._next = 1
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self.frames = 0  # ack frames sent (for tests and benchmarks)

    def received(self, message: AbstractIncomingMessage) -> None:
        """Call for every delivery of the channel (from its first), before it is handled."""
        if message.delivery_tag is not None:
            self._tags[message.delivery_tag] = _IN_FLIGHT

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message`` with the others of this turn; returns once the frame is written."""
        tag = message.delivery_tag
        if tag is None or tag not in self._tags:
            await message.ack()  # not tracked (should not happen): plain ack
            return
        self._tags[tag] = _ACK
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule()
        await waiter

    async def nack(self, message: AbstractIncomingMessage, *, requeue: bool) -> None:
        try:
            await message.nack(requeue=requeue)
        finally:
            self._settled(message)

    async def reject(self, message: AbstractIncomingMessage, *, requeue: bool) -> None:
        try:
            await message.reject(requeue=requeue)
        finally:
            self._settled(message)

    def _settled(self, message: AbstractIncomingMessage) -> None:
        # Only after the nack/reject frame was written: a later multiple ack must not cover it.
        if message.delivery_tag in self._tags:
            self._tags[message.delivery_tag] = _SETTLED
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        # The settled run must be contiguous in tag numbers, from the lowest tag not yet
        # settled: deliveries can reach ``received`` out of order (aio-pika hands each to
        # its own task), and a tag not registered yet is as good as in flight.
        top: int | None = None  # highest acked tag of the settled run
        tag = self._next
        while self._tags.get(tag, _IN_FLIGHT) != _IN_FLIGHT:
            if self._tags.pop(tag) == _ACK:
                top = tag
            tag += 1
        self._next = tag
        singles = [tag for tag, state in self._tags.items() if state == _ACK]
        for tag in singles:
            self._tags[tag] = _SETTLED  # kept, so that the run can pass it later
        waiters, self._waiters = self._waiters, []
        if top is None and not singles:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        task = asyncio.get_running_loop().create_task(self._send(top, singles, waiters))
        task.add_done_callback(_retrieve)

    async def _send(
        self, top: int | None, singles: list[int], waiters: list[asyncio.Future[None]]
    ) -> None:
        frames: list[Awaitable[Any]] = []
        if top is not None:
            frames.append(self._channel.basic_ack(top, multiple=True))
        frames.extend(self._channel.basic_ack(tag) for tag in singles)
        self.frames += len(frames)
        try:
            await asyncio.gather(*frames)
        except Exception as exc:  # the channel went: the broker redelivers, handlers dedupe
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _retrieve(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        task.exception()
