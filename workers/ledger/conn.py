"""The connection type the ledger's SQL helpers accept: a plain or a pooled connection."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["Conn"]

Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
