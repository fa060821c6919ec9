"""The README's run command, ``scripts/run``, as a user types it: it starts the system with the
sample configuration, a simulated provider's callback is accepted and reaches the ledger, and
SIGTERM (what Ctrl-C becomes) shuts it down cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, patience: float) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(patience / 0.2)):
            if proc.returncode is not None:
                raise AssertionError(f"scripts/run exited early with {proc.returncode}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


async def test_scripts_run_serves_the_sample_config_and_stops_on_sigterm(
    database_url: str, amqp_url: str, namespace: str, db: asyncpg.Connection
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        # The servers answer already, so scripts/run reuses them and must leave them running.
        "PAYHOOK_DATABASE_URL": database_url,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_LISTEN_PORT": str(port),
        "PAYHOOK_ADMIN_PORT": str(_free_port()),
        "PAYHOOK_LOG_LEVEL": "warning",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env.pop("PAYHOOK_CONFIG_PATH", None)  # the README's command uses deploy/payhook.toml
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / "run"),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output = b""
    try:
        await _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, patience=120)
        simulate = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("payhook")),
            "simulate",
            "paysera",
            "--account",
            "main",
            "--order",
            "ORD-RUN-1",
            "--amount",
            "12.50",
            "--currency",
            "EUR",
            "--status",
            "succeeded",
            "--url",
            f"http://127.0.0.1:{port}/callbacks/paysera/main",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        said, _ = await asyncio.wait_for(simulate.communicate(), 60)
        assert simulate.returncode == 0, said.decode()
        assert b"\n< 200" in said, said.decode()
        assert b"\n# acknowledged\n" in said, said.decode()
        # The README's next step: look the payment up by the transaction id the simulator printed.
        found = re.search(rb"^# paysera main: transaction (\d+), order ORD-RUN-1", said, re.M)
        assert found is not None, said.decode()
        transaction_id = found.group(1).decode()
        for _ in range(200):
            state = await db.fetchval(
                "SELECT state FROM payments WHERE transaction_id = $1", transaction_id
            )
            if state == "succeeded":
                break
            await asyncio.sleep(0.1)
        assert state == "succeeded"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    # Nothing is left listening, and the reused servers still answer.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert await db.fetchval("SELECT 1") == 1
