"""The long-running roles, by name, and running several of them in one process.

Each role is an async function of a ``runtime.process.RoleContext`` and lives in its own
area (``ingress``, ``workers``); this module only names them. If any role fails, the others
are stopped too (``runtime.process``): a half-running process (say, an ingress acknowledging
callbacks whose ledger worker died) is worse than a restart by the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from contracts.config import Config, Settings
from runtime.health import Health
from runtime.process import Role
from runtime.process import run_roles as run_role_set

__all__ = ["ROLES", "RoleFailed", "resolve", "run_roles"]


def _ingress() -> Role:
    from ingress.app import run_ingress

    return run_ingress


def _ledger() -> Role:
    from workers.ledger.consumer import run_ledger_worker

    return run_ledger_worker


def _relay() -> Role:
    from workers.relay import run_relay

    return run_relay


def _webhooks() -> Role:
    from workers.webhooks.consumer import run_webhook_worker

    return run_webhook_worker


def _admin() -> Role:
    from workers.ledger.admin import run_admin

    return run_admin


# Imported lazily so a process running one role loads only that role's code.
ROLES: dict[str, Callable[[], Role]] = {
    "worker.ledger": _ledger,
    "relay": _relay,
    "worker.webhooks": _webhooks,
    "admin": _admin,
    "ingress": _ingress,
}


def resolve(names: Sequence[str]) -> dict[str, Role]:
    return {name: ROLES[name]() for name in names}


class RoleFailed(Exception):
    """A role crashed or exited on its own (in-process runs: tests)."""


async def run_roles(
    settings: Settings,
    config: Config,
    roles: Sequence[str],
    stop: asyncio.Event,
    health: Health | None = None,
) -> None:
    """Run ``roles`` in this process until ``stop`` (no signals, no health listener)."""
    code = await run_role_set(resolve(roles), settings, config, stop, health or Health())
    if code != 0:
        raise RoleFailed(f"a role failed (exit code {code}); see the log")
