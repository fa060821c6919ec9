"""Capped, jittered backoff, and sleeping that a stop request cuts short.

"Full jitter" (a uniform delay between 0 and the capped exponential): many processes that
lost the same server at the same moment do not all knock again at the same moment.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

__all__ = ["DEFAULT_BACKOFF", "Backoff", "sleep_or_stop", "wait_any"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.2
    cap_s: float = 10.0
    floor_s: float = 0.05  # never hammer: even a lucky draw waits this long

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        ceiling = min(self.cap_s, self.initial_s * 2 ** min(attempt, 30))
        return max(self.floor_s, random.uniform(0, ceiling))


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; returns whether it was set."""
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


DEFAULT_BACKOFF = Backoff()


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:  # noqa: ASYNC109 (a plain upper bound, not a cancellation scope)
    """Return once any of ``events`` is set, or after ``timeout`` seconds."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
