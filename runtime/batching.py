"""Many callers, one round trip: calls made in the same turn of the event loop share a batch.

``Coalescer(run)`` collects the items submitted while the loop is busy and hands them to
``run(items) -> results`` once that turn ends (``call_soon``): under light load every batch
holds one item, so nothing waits for a batch to fill; under load batches grow with the number
of callers that arrive together. Each caller gets its own result, or the batch's exception
(an outage fails the whole batch; any other error runs the items again one by one, so only
the guilty one fails).
The same idea as the ingress's confirmed publishes, for Postgres statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from runtime.errors import is_outage

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        max_batch: int = 256,
        linger_s: float = 0.0,
    ) -> None:
        self._run = run
        self._max_batch = max(1, max_batch)
        # >0: the first item waits this long for company (fewer, larger batches under a
        # steady trickle, at that much latency); 0: only to the end of the loop's turn.
        self._linger_s = linger_s
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._waiters.append(waiter)
        if len(self._items) >= self._max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            if self._linger_s > 0:
                loop.call_later(self._linger_s, self._flush)
            else:
                loop.call_soon(self._flush)
        return await waiter

    def _flush(self) -> None:
        self._scheduled = False
        if not self._items:
            return
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        task = asyncio.get_running_loop().create_task(self._execute(items, waiters))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, items: list[T], waiters: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._run(items)
        except Exception as exc:
            if len(items) > 1 and not is_outage(exc):
                # One item's fault must not fail its neighbours: each on its own, then.
                for item, waiter in zip(items, waiters, strict=True):
                    await self._execute([item], [waiter])
                return
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        except BaseException:
            for waiter in waiters:
                waiter.cancel()
            raise
        for waiter, result in zip(waiters, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)
