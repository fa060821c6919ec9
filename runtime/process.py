"""A payhook process: run its roles until SIGTERM/SIGINT or a bug, then stop within the grace.

Every long-running role is an async function of a ``RoleContext``. The process:
- serves ``/healthz`` and ``/readyz`` on the health port from the first moment, so a
  supervisor sees "alive, not ready" while a role waits for Postgres or RabbitMQ;
- on the first SIGTERM or SIGINT sets ``stop``: each role stops taking work, lets in-flight
  work finish within ``PAYHOOK_SHUTDOWN_GRACE_S``, cancels the rest (unacked messages go back
  to the broker) and closes what it opened, in reverse order; a second signal exits at once;
- if a role raises (a bug) or returns on its own, logs it once with its traceback and stops
  the others the same way, then exits 1, so a supervisor restarts it;
- a watchdog thread ends the process if shutdown takes longer than the grace plus
  ``WATCHDOG_SLACK_S``, so it can never hang half-alive.

Exit codes: 0 after a requested stop, 1 after a bug (or a hung shutdown), 2 on bad
configuration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

from contracts.config import Config, Settings
from contracts.errors import ConfigError
from runtime.health import Dependency, Health, build_health_app
from runtime.metrics import add_metrics_route

__all__ = [
    "EXIT_BUG",
    "EXIT_CONFIG",
    "EXIT_OK",
    "WATCHDOG_SLACK_S",
    "Role",
    "RoleContext",
    "run_roles",
    "serve",
]

log = structlog.get_logger("payhook")

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
WATCHDOG_SLACK_S = 5.0


@dataclass(frozen=True, slots=True)
class RoleContext:
    name: str
    settings: Settings
    config: Config
    stop: asyncio.Event
    health: Health

    def dependency(self, what: str) -> Dependency:
        """This role's readiness entry for ``what`` (``"postgres"``, ``"rabbitmq"``)."""
        return self.health.dependency(f"{self.name}.{what}")


Role = Callable[[RoleContext], Awaitable[None]]


async def serve(
    roles: Mapping[str, Role],
    settings: Settings,
    config: Config,
    *,
    prepare: Role | None = None,
) -> int:
    """The process: health listener, signals, watchdog around ``run_roles``; the exit code."""
    stop = asyncio.Event()
    health = Health()
    if settings.metrics:
        add_metrics_route(health)
    signals = _install_signals(stop)
    watchdog = asyncio.create_task(_watchdog(stop, settings.shutdown_grace_s + WATCHDOG_SLACK_S))
    runner: web.AppRunner | None = None
    try:
        try:
            runner = await _start_health(health, settings)
        except OSError as exc:
            log.error(
                "payhook.health_listen_failed",
                host=settings.health_host,
                port=settings.health_port,
                reason=str(exc),
            )
            return EXIT_CONFIG
        log.info("payhook.starting", roles=list(roles), pid=os.getpid())
        code = await run_roles(roles, settings, config, stop, health, prepare=prepare)
        log.info("payhook.stopped", exit_code=code)
        return code
    finally:
        if runner is not None:
            await runner.cleanup()
        watchdog.cancel()
        _remove_signals(signals)


async def run_roles(
    roles: Mapping[str, Role],
    settings: Settings,
    config: Config,
    stop: asyncio.Event,
    health: Health,
    *,
    prepare: Role | None = None,
) -> int:
    """Run ``prepare`` (e.g. migrations), then every role until ``stop``; the exit code.

    A role that fails sets ``stop`` so the others shut down gracefully too.
    """
    if prepare is not None:
        code = await _supervise(
            "prepare", prepare, RoleContext("prepare", settings, config, stop, health)
        )
        if code != EXIT_OK or stop.is_set():
            return code
    running = asyncio.gather(
        *(
            _supervise(name, role, RoleContext(name, settings, config, stop, health))
            for name, role in roles.items()
        )
    )
    # Each role registers its dependencies before its first await; one turn of the loop
    # later every one is known, and readiness may speak.
    await asyncio.sleep(0)
    health.started = True
    try:
        results = await running
    finally:
        health.started = False
    return max(results, default=EXIT_OK)


async def _supervise(name: str, role: Role, ctx: RoleContext) -> int:
    try:
        await role(ctx)
    except ConfigError as exc:
        log.error("payhook.config_error", role=name, reason=str(exc))
        ctx.stop.set()
        return EXIT_CONFIG
    except Exception:
        log.exception("payhook.role_crashed", role=name)
        ctx.stop.set()
        return EXIT_BUG
    if not ctx.stop.is_set() and name != "prepare":
        log.error("payhook.role_exited", role=name, reason="returned before a stop was asked")
        ctx.stop.set()
        return EXIT_BUG
    return EXIT_OK


async def _start_health(health: Health, settings: Settings) -> web.AppRunner | None:
    if settings.health_port == 0:
        return None
    runner = web.AppRunner(build_health_app(health), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.health_host, settings.health_port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("payhook.health_listening", host=settings.health_host, port=settings.health_port)
    return runner


def _install_signals(stop: asyncio.Event) -> list[int]:
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("payhook.forced_exit", signal=signal.Signals(signum).name)
            _hard_exit(EXIT_BUG)
        log.info("payhook.stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            continue
        installed.append(signum)
    return installed


def _remove_signals(installed: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for signum in installed:
        loop.remove_signal_handler(signum)


async def _watchdog(stop: asyncio.Event, limit_s: float) -> None:
    """After ``stop``, a thread (independent of a possibly blocked loop) ends a hung process."""
    await stop.wait()
    if threading.current_thread() is not threading.main_thread():
        return
    done = threading.Event()

    def expire() -> None:
        if not done.wait(limit_s):
            log.error("payhook.shutdown_timed_out", limit_s=limit_s)
            _hard_exit(EXIT_BUG)

    threading.Thread(target=expire, name="payhook-watchdog", daemon=True).start()
    try:
        await asyncio.Event().wait()  # until cancelled at the end of serve()
    finally:
        done.set()


def _hard_exit(code: int) -> None:
    sys.stderr.flush()
    os._exit(code)
