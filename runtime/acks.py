"""Acks of one channel sent together: one ``multiple`` ack for every message settled so far.

A consumer that acks each message costs the broker one ``basic.ack`` frame and one settle
command to the quorum queue per message; with ~250 messages in flight and a fast merchant,
many of them finish close together. ``ChannelAcks`` collects the acks made within
``linger_s`` of the first (or within one turn of the loop) and sends a single ``multiple`` ack up to
the highest delivery tag below which every message is settled, plus one plain ack for each
acked message above the first one still in flight.

Correctness of ``multiple``: it settles every unacked tag up to the one it names, so it may
only be sent once every earlier delivery of the channel is settled by us — acked (in this
batch) or nacked/rejected already (those frames went out before, in order, and the broker no
longer holds them). A message still being handled (a hanging merchant) stops the prefix: the
acks after it go out one by one, at once, so nothing waits for a slow neighbour and no
prefetch slot is held longer than before. The tag a ``multiple`` ack names is always one the
broker still holds unacked (an unknown tag would close the channel).

"Every earlier delivery" is counted in tag numbers (a channel numbers its deliveries 1, 2,
3 …), not in the order deliveries reach ``received``: a tag not registered yet counts as in
flight, whatever order the consumer's tasks run in. And the frames go out in the order they
were decided, from one task (``_send``): acks sent concurrently were reordered by aiormq's
bounded write queue and a multiple ack named a tag an overtaking one had already covered
(PRECONDITION_FAILED, "unknown delivery tag", closed the channel in bench/webhook_drain).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import aiormq

from runtime.consume import Delivery

__all__ = ["ChannelAcks"]

_IN_FLIGHT, _ACK, _SETTLED = 0, 1, 2


class ChannelAcks:
    """Batched acks for the deliveries of one fresh channel that only this consumer uses."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, linger_s: float = 0.0) -> None:
        self._channel = channel
        # How long the first ack of a batch waits for others (0: to the end of this turn).
        self._linger_s = linger_s
        # delivery tag -> state of the deliveries not yet acked; tags below ``_next`` are
        # all settled (the channel numbers its deliveries 1, 2, 3 ...).
        self._tags: dict[int, int] = {}
        self._next = 1
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        # (multiple-ack tag, single tags, their waiters) per flush, sent by one task in order
        self._outbox: deque[tuple[int | None, list[int], list[asyncio.Future[None]]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self.frames = 0  # ack frames sent (for tests and benchmarks)

    def received(self, message: Delivery) -> None:
        """Call for every delivery of the channel (from its first), before it is handled."""
        if message.delivery_tag is not None:
            self._tags[message.delivery_tag] = _IN_FLIGHT

    async def ack(self, message: Delivery) -> None:
        """Ack ``message`` together with others; returns once its frame is queued."""
        tag = message.delivery_tag
        if tag is None or tag not in self._tags:
            await message.ack()  # not tracked (should not happen): plain ack
            return
        self._tags[tag] = _ACK
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule()
        await waiter

    async def nack(self, message: Delivery, *, requeue: bool) -> None:
        try:
            await message.nack(requeue=requeue)
        finally:
            self._settled(message)

    async def reject(self, message: Delivery, *, requeue: bool) -> None:
        try:
            await message.reject(requeue=requeue)
        finally:
            self._settled(message)

    def _settled(self, message: Delivery) -> None:
        # Only after the nack/reject frame was written: a later multiple ack must not cover it.
        if message.delivery_tag in self._tags:
            self._tags[message.delivery_tag] = _SETTLED
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._linger_s > 0:
                loop.call_later(self._linger_s, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        # The settled run must be contiguous in tag numbers, from the lowest tag not yet
        # settled; a tag not registered yet is as good as in flight.
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
        self._outbox.append((top, singles, waiters))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())
            self._sender.add_done_callback(_retrieve)

    async def _send(self) -> None:
        """Send what the flushes collected, strictly in order, from this one task.

        Two senders at once could reorder their frames: aiormq's write queue is bounded (10
        frames per connection) and ``asyncio.Queue.put`` lets a newcomer past a waiting
        putter, so a later multiple ack could overtake an earlier one, whose tag the broker
        then no longer knows (PRECONDITION_FAILED closes the channel: seen in
        bench/webhook_drain). One task enqueueing frame after frame keeps their order; it
        does not wait for each to reach the socket (``wait=False``).
        """
        while self._outbox:
            top, singles, waiters = self._outbox.popleft()
            try:
                if top is not None:
                    await self._channel.basic_ack(top, multiple=True, wait=False)
                    self.frames += 1
                for tag in singles:
                    await self._channel.basic_ack(tag, wait=False)
                    self.frames += 1
            except Exception as exc:  # the channel went: the broker redelivers, handlers dedupe
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _retrieve(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        task.exception()
