"""Per-endpoint circuit breaker: stop calling an endpoint that keeps failing, for a while.

Closed → (``threshold`` consecutive failures) → open for ``cooldown_s`` → half-open: one
trial call goes through while the others are still skipped; its success closes the breaker,
its failure opens it for another cool-down. A skipped delivery is not stuck: the worker
records the attempt as ``circuit_open`` and moves it on to its next scheduled attempt.

State lives in the worker process (each worker learns on its own); that is enough to keep a
dead endpoint from eating the worker's capacity, which is the point.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state this hands out the single trial."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if was_trial or self._failures >= self.threshold:
            self._opened_at = self._clock()

    def release(self) -> None:
        """Give back a trial that ended without an outcome (cancelled call)."""
        self._trial_in_flight = False
