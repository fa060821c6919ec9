"""Every role rides out a RabbitMQ restart and a Postgres restart, in one process, by itself.

All five roles run as ``payhook run`` runs them; between callbacks the broker and then Postgres
are restarted. Nothing restarts a role: ``running_system`` fails the test if any role exits.
Each callback is resent like a provider resends until it gets its ``OK``, and must then reach
the ledger once and the merchant.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import asyncpg
from cryptography.hazmat.primitives.asymmetric import rsa

from runtime.health import Health
from tests.e2e.harness import Merchant, running_system, system_settings
from tests.e2e.test_paysera_e2e import make_config, paysera_query, rsa_key
from tests.servers import BrokerControl, PostgresControl

__all__ = ["rsa_key"]  # the fixture, shared with the Paysera e2e tests


async def send_until_acknowledged(
    http: aiohttp.ClientSession, url: str, form: dict[str, str], patience: float = 90.0
) -> int:
    """POST like a provider: again after anything but ``OK``; returns how many tries it took."""
    deadline = time.monotonic() + patience
    tries = 0
    while True:
        tries += 1
        try:
            async with http.post(url, data=form) as resp:
                if resp.status == 200 and await resp.text() == "OK":
                    return tries
                assert resp.status == 503, f"{resp.status} {await resp.text()}"
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, "never acknowledged"
        await asyncio.sleep(0.2)


async def wait_ready(health: Health, patience: float = 90.0) -> None:
    async with asyncio.timeout(patience):
        while not health.ready:  # noqa: ASYNC110 - readiness is a flag the roles flip
            await asyncio.sleep(0.05)


async def test_all_roles_ride_out_a_broker_restart_and_a_postgres_restart(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    broker_control: BrokerControl,
    postgres_control: PostgresControl,
) -> None:
    merchant = Merchant()
    health = Health()
    async with merchant.serving():
        config = make_config(tmp_path, rsa_key, merchant.url)
        settings = system_settings(database_url, amqp_url, namespace)
        async with (
            running_system(settings, config, health=health) as base,
            aiohttp.ClientSession() as http,
        ):
            url = f"{base}/callbacks/paysera/main"
            await wait_ready(health)
            await send_until_acknowledged(http, url, paysera_query(rsa_key, requestid="9001"))
            await merchant.wait_for(1, patience=30)

            await broker_control.restart()
            await send_until_acknowledged(http, url, paysera_query(rsa_key, requestid="9002"))
            await merchant.wait_for(2, patience=60)
            await wait_ready(health)

            await postgres_control.restart()
            await send_until_acknowledged(http, url, paysera_query(rsa_key, requestid="9003"))
            await merchant.wait_for(3, patience=60)
            await wait_ready(health)
        # Leaving running_system stopped the roles: it raises if any of them had failed.

    conn = await asyncpg.connect(database_url)  # the fixture's connection died with Postgres
    try:
        rows = await conn.fetch(
            "SELECT transaction_id, state, paid FROM payments ORDER BY transaction_id"
        )
        entries = await conn.fetchval("SELECT count(*) FROM journal_entries")
    finally:
        await conn.close()
    assert [(r["transaction_id"], r["state"], r["paid"]) for r in rows] == [
        ("9001", "succeeded", 1250),
        ("9002", "succeeded", 1250),
        ("9003", "succeeded", 1250),
    ]
    assert entries == 3
    delivered = {headers["webhook-id"] for headers, _ in merchant.requests}
    assert len(delivered) == 3
