"""Delays live in RabbitMQ, not in the worker: kill -9 it (and restart the broker) meanwhile.

The worker runs as a subprocess (``python -m payhook worker webhooks``) so it can really be killed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import orjson

from tests.servers import REPO, BrokerControl, BrokerJanitor

from .helpers import (
    MerchantServer,
    declare,
    fail_first,
    fetch,
    make_event,
    new_secret,
    publish_events,
    verify_all,
    wait_until,
)

SCHEDULE = [0, 2, 1]  # fail, fail, succeed: exactly three attempts


def write_config(path: Path, url: str) -> dict[str, str]:
    """The TOML a deployment would use; returns the env holding its secret."""
    secret = new_secret()
    path.write_text(
        f"""
[webhooks]
schedule = {orjson.dumps(SCHEDULE).decode()}

[merchants.shop]
webhook_url = "{url}"
secrets = ["env:SHOP_WEBHOOK_SECRET"]
allow_private = true

[providers.paysera.acct_shop]
merchant = "shop"
project_id = "1"
""",
        encoding="utf-8",
    )
    return {"SHOP_WEBHOOK_SECRET": secret}


@asynccontextmanager
async def worker_process(
    env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "payhook",
            "worker",
            "webhooks",
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def _same(
    proc: asyncio.subprocess.Process,
) -> AsyncIterator[asyncio.subprocess.Process]:
    yield proc


async def attempt_followed_up(database_url: str, event_id: str, attempt: int) -> bool:
    rows = await fetch(
        database_url,
        "SELECT 1 FROM webhook_attempts WHERE event_id = $1 AND attempt = $2"
        " AND followed_up_at IS NOT NULL",
        event_id,
        attempt,
    )
    return bool(rows)


async def kill_while_waiting(
    database_url: str,
    amqp_url: str,
    namespace: str,
    janitor: BrokerJanitor,
    tmp_path: Path,
    meanwhile: Callable[[], Awaitable[None]] | None,
    *,
    kill: bool = True,
) -> None:
    await declare(amqp_url, namespace, SCHEDULE, janitor)
    event = make_event("shop")
    log = tmp_path / "worker.log"
    async with MerchantServer(fail_first(2)).serving() as shop:
        secrets = write_config(tmp_path / "payhook.toml", shop.url)
        env = (
            os.environ
            | secrets
            | {
                "PAYHOOK_DATABASE_URL": database_url,
                "PAYHOOK_AMQP_URL": amqp_url,
                "PAYHOOK_AMQP_NAMESPACE": namespace,
                "PAYHOOK_CONFIG_PATH": str(tmp_path / "payhook.toml"),
                "PAYHOOK_SHUTDOWN_GRACE_S": "3",
                "PAYHOOK_HEALTH_PORT": "0",
            }
        )
        async with worker_process(env, log) as first:
            await publish_events(amqp_url, namespace, [event])
            await shop.wait_for(1)
            # Attempt 1 failed and its retry sits in the 2 s delay queue: now kill -9.
            await wait_until(lambda: attempt_followed_up(database_url, event["id"], 1))
            if kill:
                first.send_signal(signal.SIGKILL)
                assert await first.wait() == -signal.SIGKILL
            if meanwhile is not None:
                await meanwhile()
            async with worker_process(env, log) if kill else _same(first) as second:
                await shop.wait_for(3, within=60)
                await wait_until(lambda: attempt_followed_up(database_url, event["id"], 3))
                await asyncio.sleep(0.5)  # room for a fourth attempt, which must not come
                second.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(second.wait(), timeout=20) == 0, log.read_text()

    assert len(shop.requests) == 3
    times = [r.at for r in shop.requests]
    for (a, b), delay in zip(itertools.pairwise(times), SCHEDULE[1:], strict=True):
        assert b - a >= delay - 0.001
    verify_all(shop.requests, secrets["SHOP_WEBHOOK_SECRET"])
    rows = await fetch(
        database_url,
        "SELECT attempt, status_code FROM webhook_attempts WHERE event_id = $1 ORDER BY attempt",
        event["id"],
    )
    assert [(r["attempt"], r["status_code"]) for r in rows] == [(1, 500), (2, 500), (3, 200)]


async def test_killed_worker_resumes_the_schedule(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    tmp_path: Path,
) -> None:
    await kill_while_waiting(database_url, amqp_url, namespace, amqp_cleanup, tmp_path, None)


async def test_killed_worker_and_restarted_broker_keep_the_schedule(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    broker_control: BrokerControl,
    tmp_path: Path,
) -> None:
    await kill_while_waiting(
        database_url, amqp_url, namespace, amqp_cleanup, tmp_path, broker_control.restart
    )


async def test_running_worker_rides_out_a_broker_restart(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    broker_control: BrokerControl,
    tmp_path: Path,
) -> None:
    await kill_while_waiting(
        database_url,
        amqp_url,
        namespace,
        amqp_cleanup,
        tmp_path,
        broker_control.restart,
        kill=False,
    )
