"""The README's run command, ``scripts/run``, as a user types it: it starts the system with the
sample configuration; every sample account takes a simulated provider callback, which reaches
the ledger (Paysepro's once its order is registered, as docs/ledger.md says); SIGTERM (what
Ctrl-C becomes) shuts it all down cleanly."""

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
PAYHOOK = str(Path(sys.executable).with_name("payhook"))

# (provider, account, amount, currency) for every account of deploy/payhook.toml.
SAMPLE_ACCOUNTS = [
    ("paysera", "main", "12.50", "EUR"),
    ("paygol", "main", "7.00", "EUR"),
    ("paycore", "main", "22.00", "USD"),
    ("paypro", "idr", "150000", "IDR"),
    ("paysepro", "main", "12.50", "EUR"),
]


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


async def _simulate(env: dict[str, str], port: int, sample: tuple[str, str, str, str]) -> str:
    """``payhook simulate`` as the README shows it; returns the transaction id it printed."""
    provider, account, amount, currency = sample
    order = f"ORD-{provider}"
    proc = await asyncio.create_subprocess_exec(
        PAYHOOK,
        "simulate",
        provider,
        "--account",
        account,
        "--order",
        order,
        "--amount",
        amount,
        "--currency",
        currency,
        "--status",
        "succeeded",
        "--url",
        f"http://127.0.0.1:{port}/callbacks/{provider}/{account}",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    said, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = said.decode()
    assert proc.returncode == 0, text
    assert "\n# acknowledged\n" in text, text
    # The README's next step looks the payment up by the transaction id printed first.
    found = re.search(rf"^# {provider} {account}: transaction (\S+), order {order},", text, re.M)
    assert found is not None, text
    return found.group(1)


async def _state(db: asyncpg.Connection, provider: str, transaction_id: str) -> tuple[str, int]:
    for _ in range(200):
        row = await db.fetchrow(
            "SELECT state, paid FROM payments WHERE provider = $1 AND transaction_id = $2",
            provider,
            transaction_id,
        )
        if row is not None and row["state"] != "new":
            return row["state"], row["paid"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{provider} {transaction_id} never reached the ledger")


async def _held(db: asyncpg.Connection, provider: str, transaction_id: str) -> list[str]:
    """The outcomes recorded for a payment that moved no money (fails if money moved)."""
    for _ in range(200):
        rows = await db.fetch(
            "SELECT c.outcome, p.paid FROM callbacks c JOIN payments p ON p.id = c.payment_id"
            " WHERE p.provider = $1 AND p.transaction_id = $2 ORDER BY c.seq",
            provider,
            transaction_id,
        )
        if rows:
            assert all(row["paid"] == 0 for row in rows)
            return [row["outcome"] for row in rows]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{provider} {transaction_id} never reached the ledger")


async def test_scripts_run_serves_the_sample_config_and_stops_on_sigterm(
    database_url: str, amqp_url: str, namespace: str, db: asyncpg.Connection
) -> None:
    port, admin_port, health_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        # The servers answer already, so scripts/run reuses them and must leave them running.
        "PAYHOOK_DATABASE_URL": database_url,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_LISTEN_PORT": str(port),
        "PAYHOOK_ADMIN_PORT": str(admin_port),
        "PAYHOOK_HEALTH_PORT": str(health_port),
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
        ids = {sample[0]: await _simulate(env, port, sample) for sample in SAMPLE_ACCOUNTS}
        for provider in ("paysera", "paygol", "paycore", "paypro"):
            state, paid = await _state(db, provider, ids[provider])
            assert (provider, state) == (provider, "succeeded")
            assert paid > 0
        await asyncio.sleep(0.5)  # room for a wrong credit to show up
        # Proven by its source address only: held until the shop registers the order...
        assert await _held(db, "paysepro", ids["paysepro"]) == ["no_expectation"]
        token = (REPO / "deploy" / "dev-secrets" / "admin-token").read_text().strip()
        order = {
            "merchant": "shop",
            "provider": "paysepro",
            "account": "main",
            "order_id": "ORD-paysepro",
            "amount_major": "12.50",
            "currency": "EUR",
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{admin_port}/orders",
                json=order,
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            answer = await resp.json()
            assert (resp.status, answer["result"], answer["released"]) == (201, "created", 1)
        # ...which releases it: credited once.
        assert await _state(db, "paysepro", ids["paysepro"]) == ("succeeded", 1250)
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
    for closed in (port, admin_port, health_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", closed)) != 0
    assert await db.fetchval("SELECT 1") == 1
