"""Every role rides out its servers by itself, stops on SIGTERM at any moment, leaks no secret.

Each test runs the real ``payhook`` command as a process. Postgres and RabbitMQ are reached
through ``FlakyServer`` proxies on ports of their own, so "the server is down" is a refused
connection and "it came back" is the proxy starting, while the real servers (shared with the
other tests) stay up. The URLs carry passwords (Postgres here trusts any), so every test also
proves none of them reaches the output.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.ports import free_port
from tests.servers import with_database

from .peers import FlakyServer, PayhookProcess, get_status, wait_status

GRACE_S = 3.0
PG_PASSWORD = "pg-hunter2-secret"
MQ_PASSWORD = "guest"  # the broker checks this one; masked the same way


@dataclass
class Stage:
    database: FlakyServer
    broker: FlakyServer
    env: dict[str, str]
    health: str  # base URL of the process's health listener
    ingress: str

    def assert_no_secret(self, process: PayhookProcess) -> None:
        text = process.text
        assert PG_PASSWORD not in text
        assert f":{MQ_PASSWORD}@" not in text


@pytest.fixture
async def stage(database_url: str, amqp_url: str, namespace: str) -> AsyncIterator[Stage]:
    db, mq = urlsplit(database_url), urlsplit(amqp_url)
    database = FlakyServer(free_port(), (db.hostname or "127.0.0.1", db.port or 5432))
    broker = FlakyServer(free_port(), (mq.hostname or "127.0.0.1", mq.port or 5672))
    listen, admin, health = free_port(), free_port(), free_port()
    proxied_db = with_database(
        f"postgresql://{db.username or 'postgres'}:{PG_PASSWORD}@127.0.0.1:{database.port}/",
        db.path.lstrip("/"),
    )
    env = {
        **os.environ,
        "PAYHOOK_DATABASE_URL": proxied_db,
        "PAYHOOK_AMQP_URL": f"amqp://guest:{MQ_PASSWORD}@127.0.0.1:{broker.port}/",
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_LISTEN_PORT": str(listen),
        "PAYHOOK_ADMIN_PORT": str(admin),
        "PAYHOOK_HEALTH_PORT": str(health),
        "PAYHOOK_SHUTDOWN_GRACE_S": str(GRACE_S),
        "PAYHOOK_CONFIG_PATH": "deploy/payhook.toml",
        "PAYHOOK_LOG_LEVEL": "info",
    }
    yield Stage(database, broker, env, f"http://127.0.0.1:{health}", f"http://127.0.0.1:{listen}")
    await database.down()
    await broker.down()


async def test_run_waits_for_both_servers_then_serves_and_rides_out_their_loss(
    stage: Stage, db: object
) -> None:
    process = PayhookProcess(["run"], stage.env)
    await process.start()
    try:
        # Nothing answers: alive, not ready, one line per attempt naming the server.
        await wait_status(f"{stage.health}/healthz", 200, process)
        report = await wait_status(f"{stage.health}/readyz", 503, process)
        assert report["ready"] is False
        await process.wait_for_output('"event":"runtime.dependency_unavailable"')
        await process.wait_for_output(f"postgres 127.0.0.1:{stage.database.port}")

        # Postgres first: migrations run, the roles that need only it get going...
        await stage.database.up()
        await process.wait_for_output('"event":"payhook.migrated"')
        await process.wait_for_output(f"rabbitmq 127.0.0.1:{stage.broker.port}")
        report = await wait_report(stage, process, lambda deps: deps.get("admin.postgres") == "up")
        assert report["ready"] is False
        assert report["dependencies"]["ingress.rabbitmq"].startswith("down")
        await wait_status(f"{stage.ingress}/readyz", 503, process)

        # ...then the broker: every role ready.
        await stage.broker.up()
        report = await wait_status(f"{stage.health}/readyz", 200, process, within=90)
        assert set(report["dependencies"]) >= {
            "worker.ledger.postgres",
            "worker.ledger.rabbitmq",
            "relay.postgres",
            "relay.rabbitmq",
            "worker.webhooks.postgres",
            "worker.webhooks.rabbitmq",
            "admin.postgres",
            "ingress.rabbitmq",
        }
        await wait_status(f"{stage.ingress}/readyz", 200, process)

        # The broker goes away and comes back: not ready meanwhile, nobody exits.
        await stage.broker.down()
        await wait_status(f"{stage.ingress}/readyz", 503, process)
        await process.wait_for_output('"event":"runtime.dependency_lost"')
        await stage.broker.up()
        await wait_status(f"{stage.health}/readyz", 200, process, within=90)
    finally:
        code, took = await process.stop(within=GRACE_S + 15)
    assert code == 0, process.text[-3000:]
    assert took < GRACE_S + 5
    stage.assert_no_secret(process)


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "--no-migrate"],
        ["ingress"],
        ["admin"],
        ["relay"],
        ["worker", "ledger"],
        ["worker", "webhooks"],
    ],
    ids=lambda args: "-".join(args),
)
async def test_sigterm_while_waiting_for_the_servers_exits_0_within_the_grace(
    stage: Stage, args: list[str]
) -> None:
    process = PayhookProcess(args, stage.env)
    await process.start()
    try:
        await process.wait_for_output('"event":"runtime.dependency_unavailable"')
        await wait_status(f"{stage.health}/readyz", 503, process)
    finally:
        code, took = await process.stop(within=GRACE_S + 15)
    assert code == 0, process.text[-3000:]
    assert took < GRACE_S + 5
    assert '"event":"payhook.stopped"' in process.text
    stage.assert_no_secret(process)


async def test_a_crashing_role_exits_1_with_one_traceback_and_no_secret(stage: Stage) -> None:
    """The ingress cannot listen (its port is taken): a bug-like failure, not an outage."""
    await stage.database.up()
    await stage.broker.up()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(stage.env["PAYHOOK_LISTEN_PORT"])))
        taken.listen()
        process = PayhookProcess(["ingress"], stage.env)
        await process.start()
        code = await _exit_code(process)
    assert code == 1, process.text[-3000:]
    text = process.text
    assert text.count('"event":"payhook.role_crashed"') == 1
    assert '"exc_type":"OSError"' in text
    assert '"locals"' not in text  # tracebacks carry no frame locals
    stage.assert_no_secret(process)


async def test_invalid_log_settings_are_refused_with_exit_2(stage: Stage) -> None:
    process = PayhookProcess(["relay"], {**stage.env, "PAYHOOK_LOG_LEVEL": "loud"})
    await process.start()
    assert await _exit_code(process) == 2
    assert "PAYHOOK_LOG_LEVEL='loud'" in process.text


async def test_an_operator_command_that_cannot_reach_postgres_prints_one_line(
    stage: Stage,
) -> None:
    for args in (["migrate"], ["ledger", "check"], ["payments", "show", "paysera", "T1"]):
        process = PayhookProcess(args, stage.env)
        await process.start()
        assert await _exit_code(process) == 3, process.text
        lines = process.text.strip().splitlines()
        assert lines == [
            f"payhook: cannot reach Postgres at 127.0.0.1:{stage.database.port}: connection refused"
        ], args
        stage.assert_no_secret(process)


async def wait_report(
    stage: Stage,
    process: PayhookProcess,
    check: Callable[[dict[str, str]], bool],
    within: float = 60.0,
) -> dict[str, Any]:
    """The /readyz report once ``check`` holds for its dependencies (each role backs off on
    its own schedule, so one reading may come before a role's next attempt)."""
    deadline = time.monotonic() + within
    while True:
        status, report = await get_status(f"{stage.health}/readyz")
        if status in (200, 503) and check(report["dependencies"]):
            return dict(report)
        assert time.monotonic() < deadline, f"{report}\n{process.text[-3000:]}"
        await asyncio.sleep(0.1)


async def _exit_code(process: PayhookProcess, within: float = 60.0) -> int:
    assert process.proc is not None
    code = await asyncio.wait_for(process.proc.wait(), within)
    await process.kill()  # collects the rest of the output
    return code


async def test_every_role_fails_over_to_the_next_broker_node(stage: Stage, amqp_url: str) -> None:
    """``PAYHOOK_AMQP_URL`` lists nodes: roles use whichever answers, and move on a loss.

    Two proxies stand for two nodes of one cluster (both lead to the real broker): node A is
    down at start, then B is taken away and A comes back; nobody exits, all get ready again.
    """
    mq = urlsplit(amqp_url)
    node_b = FlakyServer(free_port(), (mq.hostname or "127.0.0.1", mq.port or 5672))
    await stage.database.up()
    await node_b.up()
    nodes = f"amqp://guest:{MQ_PASSWORD}@127.0.0.1:{stage.broker.port}/," + (
        f"amqp://guest:{MQ_PASSWORD}@127.0.0.1:{node_b.port}/"
    )
    process = PayhookProcess(["run"], {**stage.env, "PAYHOOK_AMQP_URL": nodes})
    await process.start()
    try:
        await wait_status(f"{stage.health}/readyz", 200, process, within=90)
        assert f"rabbitmq 127.0.0.1:{stage.broker.port}" not in _available(process)
        await stage.broker.up()  # node A back
        await node_b.down()  # node B lost: every session moves to A
        # Four sessions (ingress, ledger, relay, webhooks), each link counted both ways.
        assert node_b.cut >= 8, (node_b.cut, process.text[-2500:])
        await process.wait_for_output('"event":"runtime.dependency_lost"', within=90)
        # Every role that holds a broker session reconnects, to node A (B refuses).
        async with asyncio.timeout(90):
            while _available(process).count(f"rabbitmq 127.0.0.1:{stage.broker.port}") < 4:  # noqa: ASYNC110 - another process's output
                await asyncio.sleep(0.1)
        await wait_status(f"{stage.health}/readyz", 200, process, within=90)
    finally:
        code, took = await process.stop(within=GRACE_S + 15)
        await node_b.down()
    assert code == 0, process.text[-3000:]
    assert took < GRACE_S + 5
    stage.assert_no_secret(process)


def _available(process: PayhookProcess) -> str:
    """The lines saying a role connected to a server."""
    return "\n".join(
        line for line in process.text.splitlines() if "runtime.dependency_available" in line
    )
