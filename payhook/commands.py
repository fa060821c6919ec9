"""The convention every area follows to add ``payhook`` subcommands.

An area exposes ``register(subparsers)``; each parser it adds sets ``handler`` to an async
function ``(args, settings, load_config) -> int`` (the exit status). ``load_config`` is called
only by commands that need the TOML file, so ``payhook migrate`` works without one.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from contracts.config import Config, Settings

__all__ = ["ConfigLoader", "Handler", "Subparsers"]

ConfigLoader: TypeAlias = Callable[[], Config]
Handler: TypeAlias = Callable[[argparse.Namespace, Settings, ConfigLoader], Awaitable[int]]
Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"
