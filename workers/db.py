"""asyncpg pool with JSON codecs, and the migration runner.

Migrations are plain numbered ``NNN_name.sql`` files in ``workers/migrations``, applied in
order, each in its own transaction, recorded in ``schema_migrations``. A transaction-scoped
advisory lock serializes concurrent runners (two processes starting at once), and a file
already recorded is skipped, so running ``migrate`` twice is harmless.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import asyncpg

from runtime import database
from runtime.errors import Unreachable, describe, is_database_outage
from runtime.servers import server_name

__all__ = ["connect", "create_pool", "migrate", "migrate_connection", "migration_files"]

# Arbitrary but fixed: every payhook process contends on this one advisory lock key.
_MIGRATION_LOCK_KEY = 0x7061796B  # "payk"


async def create_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float = 30.0
) -> asyncpg.Pool[Any]:
    """A pool for an operator command: ``Unreachable`` at once if Postgres does not answer."""
    try:
        pool = await asyncpg.create_pool(
            database_url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            timeout=database.CONNECT_TIMEOUT_S,
            init=database.init_connection,
        )
    except Exception as exc:
        raise _unreachable(database_url, exc) from None
    assert pool is not None
    return pool


async def connect(database_url: str) -> asyncpg.Connection[Any]:
    """One connection for an operator command: ``Unreachable`` at once if Postgres is away."""
    try:
        return await database.connect(database_url)
    except Exception as exc:
        raise _unreachable(database_url, exc) from None


def _unreachable(database_url: str, exc: Exception) -> Exception:
    if not is_database_outage(exc):
        return exc
    return Unreachable(f"Postgres at {server_name(database_url)}", describe(exc))


def migration_files() -> list[tuple[str, str]]:
    """``(name, sql)`` for every migration, in the order they apply."""
    folder = resources.files("workers") / "migrations"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


async def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    conn = await connect(database_url)
    try:
        return await migrate_connection(conn)
    finally:
        await conn.close()


async def migrate_connection(conn: asyncpg.Connection[Any]) -> list[str]:
    """Apply pending migrations over ``conn``; returns the names applied by this call."""
    applied: list[str] = []
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, sql in migration_files():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
            done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", name)
            if done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
    return applied
