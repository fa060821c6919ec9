"""How the console reaches the admin listener's pool, which arrives once Postgres answers."""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg

__all__ = ["PoolRef"]


class PoolRef(Protocol):
    """``workers.ledger.admin.PoolRef``: ``pool`` is None until Postgres answered."""

    pool: asyncpg.Pool[Any] | None
