"""``payhook run --roles``: several roles, not all, in one process (as ``bench/e2e.py --layouts
workers`` runs the three workers), and a clear refusal of a role that does not exist."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.test_run_command import _free_port, _wait_ready

REPO = Path(__file__).resolve().parents[1]
PAYHOOK = str(Path(sys.executable).with_name("payhook"))


async def test_an_unknown_role_is_refused_before_anything_starts() -> None:
    proc = await asyncio.create_subprocess_exec(
        PAYHOOK, "run", "--roles", "worker.ledger,ledgr", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "unknown role(s) ledgr" in err.decode()
    assert "worker.ledger, relay, worker.webhooks, admin, ingress" in err.decode()


async def test_only_the_named_roles_run(database_url: str, amqp_url: str, namespace: str) -> None:
    listen, health = _free_port(), _free_port()
    env = {
        **os.environ,
        "PAYHOOK_DATABASE_URL": database_url,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_LISTEN_PORT": str(listen),
        "PAYHOOK_HEALTH_PORT": str(health),
        "PAYHOOK_ADMIN_PORT": str(_free_port()),
    }
    proc = await asyncio.create_subprocess_exec(
        PAYHOOK, "run", "--no-migrate", "--roles", "ingress,relay", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    starting: dict[str, object] = {}
    try:
        async with asyncio.timeout(60):
            while not starting:
                line = await proc.stdout.readline()
                assert line, "payhook run exited before starting"
                event = orjson.loads(line)
                if event.get("event") == "payhook.starting":
                    starting = event
        assert starting["roles"] == ["ingress", "relay"]
        # The ingress of this process answers; no admin was started on its port.
        await _wait_ready(f"http://127.0.0.1:{listen}/healthz", proc, 60)
        async with aiohttp.ClientSession() as http:
            admin_port = int(env["PAYHOOK_ADMIN_PORT"])
            try:
                async with http.get(f"http://127.0.0.1:{admin_port}/") as resp:
                    raise AssertionError(f"an admin answered ({resp.status}) though not asked for")
            except aiohttp.ClientConnectionError:
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
