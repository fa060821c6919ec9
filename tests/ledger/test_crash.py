"""A ledger worker killed with SIGKILL mid-batch, then restarted: same state, nothing twice.

The worker runs as ``python -m payhook worker ledger`` (PAYHOOK_* environment, a TOML config). The
first kill is placed inside a batch's transaction on purpose: the test holds an uncommitted
outbox row with the id the worker is about to write, so the worker's batch blocks after its
payments, callbacks and postings are written, and is killed there. The second kill lands
wherever the restarted worker happens to be.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts.callbacks import CallbackReceived
from contracts.events import build_event
from contracts.statuses import Kind, Status
from contracts.topology import Topology
from workers import amqp
from workers.ledger.check import check_ledger

from .factory import ACCOUNT, MERCHANT, PROVIDERS, callback, config_toml
from .harness import eventually, ledger_balances, ledger_states, publish_callbacks
from .model import Model

S = Status
REPO = Path(__file__).resolve().parents[2]


def _histories(count: int) -> list[list[CallbackReceived]]:
    out = []
    for n in range(count):
        provider = ["paysera", "paycore", "paypro"][n % 3]
        fee = 20 if provider == "paycore" else None
        if n % 5 == 4:
            out.append(
                [
                    callback(S.PENDING, f"P{n}", provider=provider, kind=Kind.PAYOUT),
                    callback(S.SUCCEEDED, f"P{n}", provider=provider, kind=Kind.PAYOUT),
                ]
            )
        else:
            out.append(
                [
                    callback(S.PENDING, f"P{n}", provider=provider),
                    callback(S.SUCCEEDED, f"P{n}", provider=provider, fee_amount=fee),
                    callback(
                        S.PARTIALLY_REFUNDED,
                        f"P{n}",
                        provider=provider,
                        refund_amount=250,
                        variant="r1",
                    ),
                ]
            )
    return out


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "payhook", "worker", "ledger"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )


async def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(process.wait, 10)


@pytest.mark.timeout(180)
async def test_sigkill_mid_batch_then_restart_gives_the_same_ledger(
    database_url: str,
    db: asyncpg.Connection[Any],
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    histories = _histories(60)
    rng = random.Random(7)
    messages = [cb for h in histories for cb in h]
    messages += rng.sample(messages, len(messages) // 3)  # duplicates, as providers retry
    rng.shuffle(messages)
    model = Model({(p, ACCOUNT): MERCHANT for p in PROVIDERS})
    for cb in messages:
        model.apply(cb)
    unique = len({cb.id for cb in messages})

    log = tmp_path / "worker.log"
    config = tmp_path / "payhook.toml"
    config.write_text(config_toml(), encoding="utf-8")
    env = {
        **os.environ,
        "PAYHOOK_DATABASE_URL": database_url,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_CONFIG_PATH": str(config),
        "PAYHOOK_LEDGER_BATCH_SIZE": "20",
        "PAYHOOK_LEDGER_PREFETCH": "100",
        "PAYHOOK_LOG_LEVEL": "warning",
        "PAYHOOK_HEALTH_PORT": "0",
    }
    topology = Topology(namespace)
    connection = await amqp.connect(amqp_url, name="ledger-crash-test")
    channel = await connection.channel(publisher_confirms=True)
    await amqp.declare_topology(channel, topology)
    await publish_callbacks(channel, topology, messages)

    # Block one batch inside its transaction: hold the outbox row it is about to insert.
    target = next(cb for cb in messages if cb.status is S.SUCCEEDED)
    event_id = build_event(target).id
    blocker = await asyncpg.connect(database_url)
    blocking = blocker.transaction()
    await blocking.start()
    await blocker.execute(
        "INSERT INTO events (id, type, source, subject, routing_key, provider, account, body)"
        " VALUES ($1, 'x', 'x', 'x', 'x', 'x', 'x', '{}')",
        event_id,
    )

    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers.append(_start_worker(env, log))

        async def worker_blocked() -> bool:
            assert workers[-1].poll() is None, log.read_text()
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND state = 'active'"
                )
            )

        await eventually(worker_blocked, patience=60)
        await _kill(workers[-1])
        await blocking.rollback()  # the killed batch's backend gives up once it sees the EOF

        recorded_before = await db.fetchval("SELECT count(*) FROM callbacks")
        workers.append(_start_worker(env, log))

        async def progressed() -> bool:
            count = await db.fetchval("SELECT count(*) FROM callbacks")
            return bool(count > recorded_before or count == unique)

        await eventually(progressed, patience=60)
        await _kill(workers[-1])  # wherever it is
        workers.append(_start_worker(env, log))

        async def drained() -> bool:
            if await db.fetchval("SELECT count(*) FROM callbacks") != unique:
                return False
            queue = await channel.declare_queue(topology.ledger_queue, passive=True)
            return queue.declaration_result.message_count == 0

        await eventually(drained, patience=90)
        workers[-1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(workers[-1].wait, 30) == 0
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if not blocker.is_closed():
            await blocker.close()
        await connection.close()

    assert await ledger_states(db) == model.states()
    assert await ledger_balances(db) == model.balances()
    report = await check_ledger(db)
    assert report.ok, report.breaches
    # No double posting: balances equal the model's (a second posting of anything would
    # show), and a callback has at most one journal entry (its id is the entry's key); an
    # entry may carry several effects when a permuted history settles them at once.
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    money_moving = sum(1 for h in histories for cb in h if cb.status is not S.PENDING)
    assert 0 < entries <= money_moving
