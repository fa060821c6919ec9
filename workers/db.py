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
import orjson

__all__ = ["connect", "create_pool", "migrate", "migration_files"]

# Arbitrary but fixed: every payhook process contends on this one advisory lock key.
_MIGRATION_LOCK_KEY = 0x7061796B  # "payk"


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    # jsonb travels as orjson bytes both ways: faster than the stdlib and exact for ints.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def create_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float = 30.0
) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
    )
    assert pool is not None
    return pool


async def connect(database_url: str) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url, timeout=10)
    await _init_connection(conn)
    return conn


def migration_files() -> list[tuple[str, str]]:
    """``(name, sql)`` for every migration, in the order they apply."""
    folder = resources.files("workers") / "migrations"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


async def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    applied: list[str] = []
    conn = await connect(database_url)
    try:
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
    finally:
        await conn.close()
    return applied
