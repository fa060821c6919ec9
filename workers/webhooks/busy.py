"""Telling a busy endpoint from a stuck one, for the busy hop (``consumer``).

A delivery waiting for an endpoint's slot holds one of the worker's prefetched messages, so a
worker bounds how many may wait per endpoint (``Endpoint.saturated``: half the prefetch);
past the bound, deliveries go back to the broker for ``PAYHOOK_WEBHOOK_BUSY_DELAY_S`` (5 s)
as the same step. That hop isolates a hanging endpoint, but it used to hit any endpoint past
the bound: after a dip, a *fast* merchant's backlog went round the delay queue (178 hops in a
5-minute run at 500/s) and its deliveries came 5 s late, while the endpoint answered in ms.

So the hop now asks whether the endpoint is *stuck*, not merely busy: stuck means requests
are in flight and none has finished (and none started on an idle endpoint) for
``STUCK_AFTER_S``. A saturated endpoint that is stuck sends new deliveries round at once, as
before; one that is flowing keeps them, and they wait for their slot. A delivery that has
waited ``STUCK_AFTER_S`` for its slot and finds the endpoint still saturated goes round too,
so the deliveries that piled up before an endpoint hung give their messages back within
that time, and a hanging endpoint still holds at most half the prefetch after it.
"""

from __future__ import annotations

__all__ = ["STUCK_AFTER_S", "Progress"]

# Long against a working endpoint's answer (ms to a few hundred ms with max_in_flight
# requests in flight, each finishing in turn), short against a hanging one's timeout (10 s+).
STUCK_AFTER_S = 1.0


class Progress:
    """When an endpoint last moved: a request finished, or one started while none ran."""

    __slots__ = ("in_flight", "moved_at")

    def __init__(self) -> None:
        self.in_flight = 0
        self.moved_at = 0.0

    def started(self, now: float) -> None:
        if self.in_flight == 0:
            self.moved_at = now
        self.in_flight += 1

    def finished(self, now: float) -> None:
        self.in_flight -= 1
        self.moved_at = now

    def stuck(self, now: float) -> bool:
        return self.in_flight > 0 and now - self.moved_at > STUCK_AFTER_S
