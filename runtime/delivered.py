"""A delivery straight from aiormq, with what ``runtime.consume`` and ``runtime.acks`` need.

aio-pika's consumer wraps every delivery in an ``IncomingMessage`` and runs the callback in a
task of its own, on top of the task aiormq already made for it: measured in the webhook
worker (``bench/webhook_drain.py`` under py-spy), the wrapper, its ``Message`` properties and
the extra task were ~10 % of the worker's CPU per delivery. A consumer that only needs the
body, the headers and its settling frames reads the aiormq message directly (the ledger
worker does the same with its batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

__all__ = ["RawDelivery"]

_NO_HEADERS: Mapping[str, Any] = {}


class RawDelivery:
    """One delivery of a ``basic_consume`` on an aiormq channel, settled by its tag."""

    __slots__ = ("_message", "channel", "delivery_tag")

    def __init__(self, message: DeliveredMessage) -> None:
        self._message = message
        self.channel: aiormq.abc.AbstractChannel = message.channel
        self.delivery_tag: int | None = message.delivery_tag

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._message.header.properties.headers or _NO_HEADERS

    @property
    def message_id(self) -> str | None:
        return self._message.header.properties.message_id

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    async def ack(self) -> None:
        await self.channel.basic_ack(self._tag())

    async def nack(self, *, requeue: bool = True) -> None:
        await self.channel.basic_nack(self._tag(), requeue=requeue)

    async def reject(self, *, requeue: bool = False) -> None:
        await self.channel.basic_reject(self._tag(), requeue=requeue)

    def _tag(self) -> int:
        if self.delivery_tag is None:  # only basic.get-empty and returns have none
            raise ValueError("a delivery without a delivery tag cannot be settled")
        return self.delivery_tag
