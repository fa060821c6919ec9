"""Readiness of each dependency a role holds, served as ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 whenever the event loop runs (liveness: restart me if this fails).
``/readyz`` answers 200 only while every registered dependency is up, 503 otherwise, with a
JSON body naming each one and why it is down (readiness: send me no work meanwhile). The
listener is ``PAYHOOK_HEALTH_HOST:PAYHOOK_HEALTH_PORT`` (port 0: none); a process running
several roles serves them all on one port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

__all__ = ["HEALTH", "Dependency", "Health", "build_health_app"]


@dataclass(slots=True)
class Dependency:
    """One server a role needs; the role (or its connection loop) says when it is up."""

    name: str
    reason: str = "not connected yet"
    is_up: bool = False

    def up(self) -> None:
        self.is_up, self.reason = True, ""

    def down(self, reason: str) -> None:
        self.is_up, self.reason = False, reason


@dataclass(slots=True)
class Health:
    dependencies: dict[str, Dependency] = field(default_factory=dict)
    # Extra routes other parts of the process add to the health listener (e.g. /metrics).
    routes: list[Callable[[web.Application], None]] = field(default_factory=list)
    # False until every role has started and registered what it needs (before that an empty
    # or partial set of dependencies would read as "all up").
    started: bool = False

    def dependency(self, name: str) -> Dependency:
        """The state of ``name`` (``"ledger.postgres"``), registered on first use."""
        found = self.dependencies.get(name)
        if found is None:
            found = self.dependencies[name] = Dependency(name)
        return found

    @property
    def ready(self) -> bool:
        return self.started and all(dep.is_up for dep in self.dependencies.values())

    def report(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "started": self.started,
            "dependencies": {
                dep.name: "up" if dep.is_up else f"down: {dep.reason}"
                for dep in self.dependencies.values()
            },
        }


HEALTH = web.AppKey("payhook_health", Health)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    return web.Response(
        body=orjson.dumps(health.report()),
        status=200 if health.ready else 503,
        content_type="application/json",
    )


def build_health_app(health: Health) -> web.Application:
    app = web.Application()
    app[HEALTH] = health
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    for add in health.routes:
        add(app)
    return app
