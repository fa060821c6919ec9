"""The long-running roles and running several of them in one process.

If any role fails, the others are stopped too: a half-running process (say, an ingress
acknowledging callbacks whose ledger worker died) is worse than a restart by the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from contracts.config import Config, Settings

__all__ = ["ROLES", "run_roles"]

log = structlog.get_logger("payhook")

RoleRunner = Callable[[Settings, Config, asyncio.Event], Awaitable[None]]


def _ingress() -> RoleRunner:
    from ingress.app import run_ingress

    return run_ingress


def _ledger() -> RoleRunner:
    from workers.ledger.consumer import run_ledger_worker

    return run_ledger_worker


def _relay() -> RoleRunner:
    from workers.relay import run_relay

    return run_relay


def _webhooks() -> RoleRunner:
    from workers.webhooks.consumer import run_webhook_worker

    return run_webhook_worker


def _admin() -> RoleRunner:
    from workers.ledger.admin import run_admin

    return run_admin


# Imported lazily so a process running one role loads only that role's code.
ROLES: dict[str, Callable[[], RoleRunner]] = {
    "worker.ledger": _ledger,
    "relay": _relay,
    "worker.webhooks": _webhooks,
    "admin": _admin,
    "ingress": _ingress,
}


async def run_roles(
    settings: Settings, config: Config, roles: Sequence[str], stop: asyncio.Event
) -> None:
    async def supervised(name: str) -> None:
        try:
            await ROLES[name]()(settings, config, stop)
        except Exception:
            log.exception("payhook.role_crashed", role=name)
            stop.set()
            raise

    async with asyncio.TaskGroup() as group:
        for name in roles:
            group.create_task(supervised(name), name=name)
