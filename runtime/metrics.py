"""Prometheus metrics: ``/metrics`` on the health port, and gauges refreshed from a query.

Each area declares its own metrics next to the code that moves them (``ingress/metrics.py``,
``workers/metrics.py``) in the default registry, so a process running several roles exposes
them all on one port. Names follow Prometheus conventions (``payhook_<area>_…_total``,
base units, ``_seconds``); labels are bounded (provider, account, merchant, outcome, reason,
state: never an id). Queue depths are the broker's business (``rabbitmq_prometheus``).

``PAYHOOK_METRICS=false`` turns the instrumentation off (the counters are then never
touched and ``/metrics`` answers 404), which is how the overhead is measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import prometheus_client
import structlog
from aiohttp import web

from runtime.backoff import sleep_or_stop
from runtime.errors import describe, is_outage
from runtime.health import Health

__all__ = ["add_metrics_route", "refresh_periodically"]

log = structlog.get_logger("runtime")


async def _metrics(_: web.Request) -> web.Response:
    body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def add_metrics_route(health: Health) -> None:
    """Serve ``GET /metrics`` on the health listener."""

    def add(app: web.Application) -> None:
        app.router.add_get("/metrics", _metrics)

    health.routes.append(add)


async def refresh_periodically(
    name: str, refresh: Callable[[], Awaitable[None]], stop: asyncio.Event, every_s: float
) -> None:
    """Run ``refresh`` (a query that sets gauges) every ``every_s`` until ``stop``.

    A failed refresh keeps the last values (an outage is logged by the role itself, so only at
    debug level here); a scrape never waits for a query.
    """
    while not stop.is_set():
        try:
            await refresh()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.debug("runtime.metrics_refresh_failed", metrics=name, reason=describe(exc))
        if await sleep_or_stop(stop, every_s):
            return
