"""Running a role in the test's own event loop, as ``runtime.process`` would."""

from __future__ import annotations

import asyncio

from contracts.config import Config, Settings
from runtime.health import Health
from runtime.process import RoleContext

__all__ = ["role_context"]


def role_context(
    name: str,
    settings: Settings,
    config: Config,
    stop: asyncio.Event,
    health: Health | None = None,
) -> RoleContext:
    return RoleContext(name, settings, config, stop, health or Health())
