"""Console fixtures: the admin app (with the console) on a test server, signed-in clients.

``console`` is an aiohttp ``TestClient`` for the admin listener's app exactly as ``payhook
admin`` builds it (``build_admin_app(pool, config, settings)``), against the session's
Postgres and a per-test RabbitMQ namespace. ``signed_in(client)`` logs in through the login
form and returns the session's CSRF token, read from a page the way a browser would see it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from contracts.config import Config, Settings, parse_config
from workers import db as workers_db
from workers.ledger.admin import build_admin_app

ADMIN_TOKEN = "console-admin-token-0123456789abcdef"
OTHER_TOKEN = "console-second-token-fedcba9876543210"


def console_config(merchant_url: str = "http://127.0.0.1:9/hooks", **admin: Any) -> Config:
    data: dict[str, Any] = {
        "merchants": {
            "shop": {"webhook_url": merchant_url, "secrets": [], "allow_private": True},
            "other": {"webhook_url": "http://127.0.0.1:9/other", "secrets": []},
        },
        "providers": {
            "paysera": {"main": {"merchant": "shop"}},
            "paycore": {"main": {"merchant": "shop"}},
            "paysepro": {"main": {"merchant": "shop"}},
        },
        "admin": {"tokens": ["env:CONSOLE_TOKEN", "env:CONSOLE_TOKEN_2"], **admin},
    }
    env = {"CONSOLE_TOKEN": ADMIN_TOKEN, "CONSOLE_TOKEN_2": OTHER_TOKEN}
    return parse_config(data, environ=env)


@pytest.fixture
def settings(database_url: str, amqp_url: str, namespace: str) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        shutdown_grace_s=2.0,
    )


@pytest.fixture
async def pool(database_url: str, db: Any) -> AsyncIterator[asyncpg.Pool[Any]]:
    p = await workers_db.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def console(
    pool: asyncpg.Pool[Any], settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_admin_app(pool, console_config(), settings)
    async with TestClient(TestServer(app)) as client:
        yield client


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def signed_in(client: TestClient[Any, Any], token: str = ADMIN_TOKEN) -> str:
    """Sign in through the form; returns the CSRF token the pages carry."""
    response = await client.post(
        "/console/login", data={"token": token, "next": "/console/"}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    page = await client.get("/console/endpoints")
    assert page.status == 200
    found = _CSRF.search(await page.text())
    assert found is not None
    return found.group(1)
