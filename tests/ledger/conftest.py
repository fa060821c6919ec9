"""Ledger fixtures on top of tests/conftest.py (``database_url``, ``db``, ``namespace`` …)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from contracts.config import Config, Settings
from workers import db as workers_db
from workers.ledger.apply import Policy

from .factory import make_config


@pytest.fixture
def ledger_config() -> Config:
    return make_config()


@pytest.fixture
def policy(ledger_config: Config) -> Policy:
    return Policy.from_config(ledger_config)


@pytest.fixture
async def pool(database_url: str, db: Any) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A worker-style pool (orjson codecs); ``db`` truncates everything afterwards."""
    p = await workers_db.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def settings(database_url: str, amqp_url: str, namespace: str) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        ledger_prefetch=20,
        ledger_batch_size=8,
        ledger_batch_wait_ms=2.0,
        shutdown_grace_s=5.0,
    )
