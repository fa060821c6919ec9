"""The console while a server is away: sign-in still works, pages say which server is down."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from contracts.config import Settings
from tests.ports import refused_port
from workers.ledger.admin import build_admin_app

from . import data
from .conftest import ADMIN_TOKEN, console_config, signed_in


async def test_without_postgres_pages_answer_503_and_sign_in_still_works(
    settings: Settings,
) -> None:
    app = build_admin_app(None, console_config(), settings)  # the pool has not arrived yet
    async with TestClient(TestServer(app)) as client:
        # Signing in needs no database; the overview it leads to does.
        response = await client.post("/console/login", data={"token": ADMIN_TOKEN})
        assert [r.status for r in response.history] == [303]
        assert response.url.path == "/console/"
        assert response.status == 503
        text = await response.text()
        assert "Postgres unavailable" in text
        assert "connection refused" in text


async def test_without_rabbitmq_depths_say_so_and_a_replay_is_refused(
    pool: asyncpg.Pool[Any], database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    events = await data.deliveries(database_url, db)
    with refused_port() as port:  # refuses connections while it is held
        away = dataclasses.replace(settings, amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/")
        app = build_admin_app(pool, console_config(), away)
        async with TestClient(TestServer(app)) as client:
            csrf = await signed_in(client)
            doc = await (await client.get("/console/api/overview")).json()
            assert doc["attention"] == {}
            for depth in doc["queues"].values():
                assert depth["messages"] is None
                assert depth["error"].startswith("broker unavailable")
            response = await client.post(
                "/console/deliveries/replay",
                data={"csrf": csrf, "event_id": events["failed"], "merchant": "shop"},
            )
            assert response.status == 503
            assert "RabbitMQ unavailable" in await response.text()
            # Nothing changed: the round starts only with a publish.
            assert (
                await db.fetchval(
                    "SELECT round FROM webhook_deliveries WHERE event_id = $1", events["failed"]
                )
                == 0
            )
            unknown = await client.post("/console/endpoints/nobody/disable", data={"csrf": csrf})
            assert unknown.status == 404
            enable = await client.post(
                "/console/endpoints/shop/enable", data={"csrf": csrf}, allow_redirects=False
            )
            assert enable.headers["Location"] == "/console/endpoints?notice=enabled"
