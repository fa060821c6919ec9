"""Ledger drain benchmark (bounded; talks only to 127.0.0.1).

Pre-loads ``--count`` callbacks on ``<ns>.ledger`` (a quarter of them duplicates, as provider
retries and redeliveries produce), then starts the ledger worker (``python -m
workers.ledger``, default settings unless overridden) and times how long it takes to apply
them all. Prints callbacks/s (every message, duplicates included) and unique callbacks/s,
then runs ``ledger check``.

    PAYHOOK_DATABASE_URL=… PAYHOOK_AMQP_URL=… .venv/bin/python bench/ledger_drain.py \
        --count 20000

Uses its own database (``payhook_bench_ledger``, recreated, dropped at the end unless
``--keep``) and its own broker namespace (deleted at the end), so it never touches a running
installation's data. Stops by itself: ``--deadline`` seconds at most.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from contracts.callbacks import (
    CALLBACK_BATCH_TYPE,
    CallbackReceived,
    RawRequest,
    encode_callback,
    encode_callbacks,
)
from contracts.statuses import Kind, Status, VerifiedBy
from contracts.topology import HEADER_CORRELATION_ID, Topology
from workers import amqp
from workers.db import migrate
from workers.ledger.check import check_ledger

REPO = Path(__file__).resolve().parents[1]
DATABASE = "payhook_bench_ledger"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_PROVIDERS = {
    "paysera": VerifiedBy.SIGNATURE,
    "paycore": VerifiedBy.SIGNATURE,
    "paypro": VerifiedBy.SIGNATURE,
    "paygol": VerifiedBy.SHARED_SECRET,
}
_CONFIG = """
[merchants.shop]
webhook_url = "http://127.0.0.1:9/hook"
""" + "".join(f'\n[providers.{p}.main]\nmerchant = "shop"\n' for p in _PROVIDERS)


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in _LOOPBACK:
        raise SystemExit(f"refusing to benchmark against {host!r}: 127.0.0.1 only")
    return url


def _callback(
    provider: str, txid: str, status: Status, n: int, **extra: object
) -> CallbackReceived:
    query = f"projectid=1&orderid=ORD-{txid}&amount=1250&currency=EUR&status={status.value}"
    return CallbackReceived(
        provider=provider,
        account="main",
        transaction_id=txid,
        provider_status=status.value,
        status=status,
        kind=Kind.PAYMENT,
        verified_by=_PROVIDERS[provider],
        received_at="2026-01-02T03:04:05Z",
        raw=RawRequest("GET", f"/callbacks/{provider}/main", query, b"", {}, "127.0.0.1"),
        order_id=f"ORD-{txid}",
        amount=1250,
        currency="EUR",
        correlation_id=f"bench-{n}",
        **extra,  # type: ignore[arg-type]
    )


def cpu_reference() -> float:
    """Milliseconds for a fixed pure-Python loop: this host's speed right now (it varies)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(20):
            sum(range(1_000_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def cpu_seconds(worker_pids: set[int], worker: str = "ledger worker") -> dict[str, float]:
    """CPU time so far per component (Linux /proc; empty elsewhere): where the drain's cost goes."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if int(entry.name) in worker_pids:
            name = worker
        elif comm == "postgres":
            name = "postgres"
        elif comm.startswith("beam"):
            name = "rabbitmq"
        else:
            name = "other"
        totals[name] = totals.get(name, 0.0) + used
    return totals


def workload(
    count: int, seed: int = 1, order: str = "arrival", prefix: str = "B"
) -> tuple[list[CallbackReceived], int]:
    """``count`` messages: 75% unique callbacks (pending + succeeded, some refunds), 25% repeats.

    ``arrival`` orders them as they would arrive: payment ``i`` starts at slot ``i``, succeeds
    up to 3,000 messages later, is refunded later still, and a repeat comes up to 5,000
    messages after its original (at 5,000/s: within a second or so; real gaps are longer).
    ``shuffled`` is the worst case for the ledger's row locks: every batch in flight shares
    payments with the one before it, so their transactions take turns. Every transaction
    id starts with ``prefix``: another workload against the same database needs its own.
    """
    rng = random.Random(seed)
    unique: list[tuple[float, CallbackReceived]] = []
    target = count - count // 4
    n = 0
    providers = list(_PROVIDERS)
    while len(unique) < target:
        provider = providers[n % len(providers)]
        txid = f"{prefix}{n}"
        fee = {"fee_amount": 25} if provider == "paycore" else {}
        paid_at = n + rng.uniform(0, 3000)
        unique.append((n, _callback(provider, txid, Status.PENDING, n)))
        unique.append((paid_at, _callback(provider, txid, Status.SUCCEEDED, n, **fee)))
        if n % 10 == 0:
            refund = _callback(
                provider, txid, Status.PARTIALLY_REFUNDED, n, refund_amount=250, variant="r1"
            )
            unique.append((paid_at + rng.uniform(0, 3000), refund))
        n += 1
    unique = unique[:target]
    repeats = [(at + rng.uniform(1, 5000), cb) for at, cb in rng.choices(unique, k=count - target)]
    timed = unique + repeats
    if order == "shuffled":
        rng.shuffle(timed)
    else:
        timed.sort(key=lambda pair: pair[0])
    return [cb for _, cb in timed], len(unique)


async def preload(
    amqp_url: str, topology: Topology, messages: list[CallbackReceived], per_message: int
) -> float:
    connection = await amqp.connect(amqp_url, name="payhook-bench-preload")
    try:
        channel = await connection.channel(publisher_confirms=True)
        await amqp.declare_topology(channel, topology)
        exchange = await channel.get_exchange(topology.callbacks_exchange, ensure=False)
        in_flight = asyncio.Semaphore(512)
        started = time.perf_counter()

        async def publish(n: int, group: list[CallbackReceived]) -> None:
            first = group[0]
            if len(group) == 1:
                message = aio_pika.Message(
                    encode_callback(first),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    message_id=first.id,
                    headers={HEADER_CORRELATION_ID: f"bench-{n}"},
                )
            else:  # as the ingress packs callbacks that arrive together
                message = aio_pika.Message(
                    encode_callbacks(group),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    type=CALLBACK_BATCH_TYPE,
                )
            async with in_flight:
                await exchange.publish(
                    message,
                    routing_key=topology.callback_routing_key(first.provider, first.account),
                )

        groups = [messages[i : i + per_message] for i in range(0, len(messages), per_message)]
        await asyncio.gather(*(publish(n, group) for n, group in enumerate(groups)))
        return time.perf_counter() - started
    finally:
        await connection.close()


async def cleanup_broker(amqp_url: str, topology: Topology) -> None:
    connection = await amqp.connect(amqp_url, name="payhook-bench-cleanup")
    try:
        channel = await connection.channel()
        for queue in (
            topology.ledger_queue,
            topology.ledger_dead_queue,
            topology.webhooks_queue,
            topology.webhooks_dead_queue,
            topology.orders_queue,
        ):
            await channel.queue_delete(queue)
        for exchange in (
            topology.callbacks_exchange,
            topology.events_exchange,
            topology.ledger_dead_exchange,
        ):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


@dataclass
class Drain:
    """One timed drain: rates from worker start and CPU seconds by component."""

    messages: int
    unique: int
    seconds: float  # from worker start to the last callback recorded
    steady: float | None  # callbacks/s after the first commit
    cpu: dict[str, float]  # cpu_seconds()'s components, plus "postgres backends"

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _backend_cpu(pids: Sequence[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def drain(
    database_url: str,
    amqp_url: str,
    topology: Topology,
    messages: list[CallbackReceived],
    unique: int,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    deadline: float = 300.0,
    profile: str | None = None,
) -> Drain | None:
    """Start ``workers`` ledger workers on the pre-loaded queue; time them until ``unique``
    callbacks are recorded (``None`` if they did not make it). The queue must hold
    ``messages`` and the database no callbacks of them yet.

    "postgres backends" is the CPU of the connections the workers opened to this database,
    read from /proc before they stop (the pool keeps them open from start to stop): what the
    ledger costs Postgres, without other databases, autovacuum and other servers sharing the
    machine (the "postgres" component counts every process of that name).
    """
    conn = await asyncpg.connect(database_url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        recorded_before = await conn.fetchval("SELECT count(*) FROM callbacks")
        since = await conn.fetchval("SELECT now()")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "payhook.toml"
            config.write_text(_CONFIG, encoding="utf-8")
            child_env = {
                **os.environ,
                "PAYHOOK_DATABASE_URL": database_url,
                "PAYHOOK_AMQP_URL": amqp_url,
                "PAYHOOK_AMQP_NAMESPACE": topology.namespace,
                "PAYHOOK_CONFIG_PATH": str(config),
                "PAYHOOK_LOG_LEVEL": "warning",
                "PAYHOOK_HEALTH_PORT": "0",  # several workers: none needs a health listener
                **(env or {}),
            }
            started = time.perf_counter()
            command = [sys.executable, "-m", "payhook", "worker", "ledger"]
            if profile:
                command[1:1] = ["-m", "cProfile", "-o", profile]
            for _ in range(workers):
                processes.append(subprocess.Popen(command, cwd=REPO, env=child_env))  # noqa: ASYNC220
            pids = {p.pid for p in processes}
            cpu_before = cpu_seconds(pids)
            first = None
            target = recorded_before + unique
            while True:
                # The sequence is a cheap progress gauge (a count(*) every 50 ms would add
                # load of its own); it can run ahead of commits, so the end is a real count.
                recorded = await conn.fetchval(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM callbacks_seq_seq"
                )
                if recorded >= target:
                    recorded = await conn.fetchval("SELECT count(*) FROM callbacks")
                now = time.perf_counter()
                if first is None and recorded > recorded_before:
                    first = (now, recorded)
                if recorded >= target:
                    break
                if now - started > deadline:
                    got = recorded - recorded_before
                    print(f"  gave up after {deadline:.0f} s: {got} of {unique}")
                    return None
                if any(p.poll() is not None for p in processes):
                    print("  a worker exited early")
                    return None
                await asyncio.sleep(0.05)
            done = time.perf_counter()
            cpu_after = cpu_seconds(pids)
            # The workers' connections: opened since they started, so all their CPU is theirs
            # (not autovacuum's, nor that of whoever else is connected).
            backends = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND backend_start >= $1"
                " AND pid <> pg_backend_pid()",
                since,
            )
            cpu = {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after}
            cpu["postgres backends"] = _backend_cpu([r["pid"] for r in backends])
            steady = None
            if first is not None and done > first[0]:
                steady = (target - first[1]) / (done - first[0]) * len(messages) / unique
            return Drain(len(messages), unique, done - started, steady, cpu)
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="callbacks to pre-load")
    parser.add_argument(
        "--per-message",
        type=int,
        default=1,
        help="callbacks per AMQP message (the ingress packs those that arrive together)",
    )
    parser.add_argument("--batch-size", type=int, help="PAYHOOK_LEDGER_BATCH_SIZE")
    parser.add_argument("--prefetch", type=int, help="PAYHOOK_LEDGER_PREFETCH")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--order",
        choices=("arrival", "shuffled"),
        default="arrival",
        help="arrival: as providers send them; shuffled: worst case for row locks",
    )
    parser.add_argument("--deadline", type=float, default=300.0, help="give up after (s)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--profile", metavar="PATH", help="run the worker under cProfile")
    args = parser.parse_args()

    server = _loopback(
        os.environ.get("PAYHOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/payhook")
    )
    amqp_url = _loopback(os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/"))
    database_url = urlunsplit(urlsplit(server)._replace(path=f"/{DATABASE}"))
    admin = await asyncpg.connect(server)
    await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {DATABASE}")
    await migrate(database_url)
    namespace = f"bench{secrets.token_hex(4)}"
    topology = Topology(namespace)

    messages, unique = workload(args.count, order=args.order)
    print(
        f"ledger drain: {len(messages)} callbacks ({unique} unique, "
        f"{len(messages) - unique} duplicates, {args.order} order), {args.workers} worker(s)"
    )
    per_message = max(1, args.per_message)
    elapsed = await preload(amqp_url, topology, messages, per_message)
    print(
        f"  preload: {len(messages)} published (confirmed, {per_message} per message) "
        f"in {elapsed:.1f} s"
    )
    env = {}
    if args.batch_size:
        env["PAYHOOK_LEDGER_BATCH_SIZE"] = str(args.batch_size)
    if args.prefetch:
        env["PAYHOOK_LEDGER_PREFETCH"] = str(args.prefetch)
    result = await drain(
        database_url,
        amqp_url,
        topology,
        messages,
        unique,
        workers=args.workers,
        env=env,
        deadline=args.deadline,
        profile=args.profile,
    )
    status = 1
    if result is not None:
        print(
            f"  drained in {result.seconds:.2f} s from worker start: "
            f"{result.rate:,.0f} callbacks/s ({unique / result.seconds:,.0f} unique/s)"
        )
        if result.steady is not None:
            print(
                f"  after the first commit: {result.steady:,.0f} callbacks/s "
                f"({result.steady * unique / len(messages):,.0f} unique/s)"
            )
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result.cpu.items()) if v > 0.05)
        if parts:
            print(
                f"  CPU while draining ({os.cpu_count()} cores x {result.seconds:.1f} s): {parts}"
            )
        print(
            f"  CPU reference (sum(range(10**6)) x 20): {cpu_reference():.0f} ms, lower is faster"
        )
        conn = await asyncpg.connect(database_url)
        report = await check_ledger(conn)
        await conn.close()
        counts = ", ".join(f"{k}={v}" for k, v in report.counts.items())
        print(f"  ledger check: {'ok' if report.ok else 'FAILED'} ({counts})")
        for breach in report.breaches:
            print(f"    BREACH {breach}")
        status = 0 if report.ok else 1
    await cleanup_broker(amqp_url, topology)
    if not args.keep:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    await admin.close()
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
