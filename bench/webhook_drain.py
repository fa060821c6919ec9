"""Webhook stage benchmark (bounded; talks only to 127.0.0.1).

Pre-loads ``--count`` events on ``<ns>.events`` exactly as the relay publishes them, starts
one webhook worker (``payhook worker webhooks``) against a merchant server (its own process)
that answers 200 at once, and times how long it takes until the merchant has every event.
Prints deliveries/s, Postgres commits and row writes per delivery (from ``pg_stat_database``
of its own database) and CPU milliseconds per delivery for each component.

    PAYHOOK_DATABASE_URL=… PAYHOOK_AMQP_URL=… .venv/bin/python bench/webhook_drain.py \
        --count 20000 [--max-in-flight 16] [--prefetch 256]

Uses its own database (``payhook_bench_webhooks``, recreated, dropped at the end) and its own
broker namespace (deleted at the end). Stops by itself: ``--deadline`` seconds at most.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ledger_drain import cpu_reference, cpu_seconds
from contracts.callbacks import CallbackReceived, RawRequest
from contracts.events import CloudEvent, build_event, encode_event, routing_key
from contracts.statuses import Kind, Status, VerifiedBy
from contracts.topology import HEADER_CORRELATION_ID, Topology
from workers import amqp
from workers.db import migrate

REPO = Path(__file__).resolve().parents[1]
# The checkout whose code the worker runs (default: this one), to compare two in one session.
CODE = Path(os.environ.get("PAYHOOK_BENCH_CODE", REPO))
DATABASE = "payhook_bench_webhooks"

MERCHANT_SERVER = r"""
import sys
from aiohttp import web
seen = set()
async def hook(request):
    await request.read()
    seen.add(request.headers.get("webhook-id"))
    return web.Response(text="ok")
async def count(request):
    return web.Response(text=str(len(seen)))
app = web.Application()
app.router.add_post("/hook", hook)
app.router.add_get("/count", count)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def events(count: int) -> list[CloudEvent]:
    out = []
    for n in range(count):
        callback = CallbackReceived(
            provider="paysera",
            account="main",
            transaction_id=f"wh-{n}",
            provider_status="1",
            status=Status.SUCCEEDED,
            kind=Kind.PAYMENT,
            verified_by=VerifiedBy.SIGNATURE,
            received_at="2026-12-01T00:00:00Z",
            raw=RawRequest("POST", "/callbacks/paysera/main", "", b"data=x", {}, "127.0.0.1"),
            order_id=f"order-{n}",
            amount=1250,
            currency="EUR",
            correlation_id=f"bench-{n}",
        )
        out.append(build_event(callback, merchant="shop"))
    return out


async def preload(amqp_url: str, topology: Topology, batch: list[CloudEvent]) -> None:
    connection = await amqp.connect(amqp_url, name="payhook-bench-webhooks")
    try:
        channel = await connection.channel(publisher_confirms=True)
        await amqp.declare_topology(channel, topology, (0, 3600, 10800, 86400, 5))
        exchange = await channel.get_exchange(topology.events_exchange)
        for start in range(0, len(batch), 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            encode_event(event),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            content_type="application/cloudevents+json",
                            message_id=event.id,
                            headers={HEADER_CORRELATION_ID: event.correlationid or ""},
                        ),
                        routing_key=routing_key(Kind.PAYMENT, Status.SUCCEEDED, "paysera"),
                    )
                    for event in batch[start : start + 500]
                )
            )
    finally:
        await connection.close()


async def cleanup_broker(amqp_url: str, topology: Topology) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for queue in topology.declarations((0, 3600, 10800, 86400, 5)).queues:
            await channel.queue_delete(queue.name)
        for exchange in topology.declarations().exchanges:
            await channel.exchange_delete(exchange.name)
    finally:
        await connection.close()


async def db_stats(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        assert row is not None
        return dict(row)
    finally:
        await conn.close()


async def own_servers(admin: asyncpg.Connection[Any], amqp_url: str) -> dict[str, int | None]:
    """The postmaster and the RabbitMQ node this run talks to: on a machine shared with other
    servers, ``cpu postgres``/``cpu rabbitmq`` above count all of them."""
    from e2e import _listener_pid, _postmaster_pid

    data_dir = await admin.fetchval("SHOW data_directory")
    try:
        postmaster: int | None = _postmaster_pid(data_dir)
    except OSError:
        postmaster = None
    return {"postgres": postmaster, "rabbitmq": _listener_pid(urlsplit(amqp_url).port or 5672)}


def servers_cpu(servers: dict[str, int | None]) -> dict[str, float]:
    from e2e import _children
    from ingress_ceiling import cpu_of

    return {
        name: sum(cpu_of(p) for p in (pid, *_children(pid)))
        for name, pid in servers.items()
        if pid is not None
    }


def _log_size(path: str | None) -> int:
    return Path(path).stat().st_size if path and Path(path).exists() else 0


def _open_log(path: str | None) -> BinaryIO | None:
    return open(path, "ab") if path else None  # closed once the worker has exited


def _count_lines(path: str, start: int, needle: bytes) -> int:
    with open(path, "rb") as logs:
        logs.seek(start)
        return sum(1 for line in logs if needle in line)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--max-in-flight", type=int, default=None)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--profile", help="write a py-spy flame graph (SVG) of the worker here")
    parser.add_argument(
        "--log-file", help="append the worker's logs (level info) here; prints its busy hops"
    )
    args = parser.parse_args()

    server = os.environ.get("PAYHOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/payhook")
    amqp_url = os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/")
    parts = urlsplit(server)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    database_url = urlunsplit(parts._replace(path=f"/{DATABASE}"))
    await migrate(database_url)
    namespace = f"bench{secrets.token_hex(4)}"
    topology = Topology(namespace)
    port = free_port()
    merchant = subprocess.Popen([sys.executable, "-c", MERCHANT_SERVER, str(port)])  # noqa: ASYNC220
    worker: subprocess.Popen[bytes] | None = None
    log_file = None
    log_start = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            (Path(tmp) / "secret").write_text(secret)
            extra = f"max_in_flight = {args.max_in_flight}\n" if args.max_in_flight else ""
            (Path(tmp) / "payhook.toml").write_text(
                f'[merchants.shop]\nwebhook_url = "http://127.0.0.1:{port}/hook"\n'
                f'secrets = ["file:secret"]\nallow_private = true\n{extra}'
                '\n[providers.paysera.main]\nmerchant = "shop"\nproject_id = "1"\n'
                'password = "file:secret"\n'
            )
            batch = events(args.count)
            started = time.perf_counter()
            await preload(amqp_url, topology, batch)
            print(f"preloaded {args.count} events in {time.perf_counter() - started:.1f}s")
            env = {
                **os.environ,
                "PAYHOOK_DATABASE_URL": database_url,
                "PAYHOOK_AMQP_URL": amqp_url,
                "PAYHOOK_AMQP_NAMESPACE": namespace,
                "PAYHOOK_CONFIG_PATH": str(Path(tmp) / "payhook.toml"),
                "PAYHOOK_HEALTH_PORT": "0",
                "PAYHOOK_LOG_LEVEL": "info" if args.log_file else "warning",
            }
            if args.prefetch:
                env["PAYHOOK_WEBHOOK_PREFETCH"] = str(args.prefetch)
            reference = cpu_reference()
            before_db = await db_stats(database_url)
            log_start = _log_size(args.log_file)
            log_file = _open_log(args.log_file)
            worker = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below
                [sys.executable, "-m", "payhook", "worker", "webhooks"],
                cwd=CODE,
                env={**env, "PYTHONPATH": str(CODE)},
                stdout=log_file,
                stderr=log_file,
            )
            pids = {worker.pid}
            spy = None
            if args.profile:
                spy = subprocess.Popen(  # noqa: ASYNC220 - a sidecar, waited for below
                    [
                        "py-spy",
                        "record",
                        "-o",
                        args.profile,
                        "--pid",
                        str(worker.pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            servers = await own_servers(admin, amqp_url)
            cpu_before = cpu_seconds(pids, "webhook worker")
            own_before = servers_cpu(servers)
            t0 = time.perf_counter()
            delivered = 0
            async with aiohttp.ClientSession() as http:
                while time.perf_counter() - t0 < args.deadline:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/count") as resp:
                            delivered = int(await resp.text())
                    except aiohttp.ClientError:
                        pass
                    if delivered >= args.count:
                        break
                    await asyncio.sleep(0.1)
            took = time.perf_counter() - t0
            cpu_after = cpu_seconds(pids, "webhook worker")
            own_after = servers_cpu(servers)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            after_db = await db_stats(database_url)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        if log_file is not None:
            log_file.close()
        merchant.terminate()
        merchant.wait(10)
        await cleanup_broker(amqp_url, topology)
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.close()
    n = max(delivered, 1)
    print(
        f"delivered {delivered}/{args.count} in {took:.2f}s: {delivered / took:,.0f} webhooks/s"
        f" (cpu reference {reference:.0f} ms)"
    )
    commits = after_db["xact_commit"] - before_db["xact_commit"]
    writes = (after_db["tup_inserted"] - before_db["tup_inserted"]) + (
        after_db["tup_updated"] - before_db["tup_updated"]
    )
    print(f"postgres: {commits / n:.2f} commits and {writes / n:.2f} row writes per delivery")
    for name in sorted(cpu_after):
        spent = cpu_after[name] - cpu_before.get(name, 0.0)
        if spent > 0.05:
            print(f"cpu {name}: {spent:.1f}s = {1000 * spent / n:.3f} ms per delivery")
    for name in sorted(own_after):
        spent = own_after[name] - own_before.get(name, 0.0)
        print(f"cpu {name} (ours only): {spent:.1f}s = {1000 * spent / n:.3f} ms per delivery")
    if args.log_file:
        hops = _count_lines(args.log_file, log_start, b'"webhooks.deferred_busy"')
        print(f"busy hops (the same step sent round the {args.count} deliveries): {hops}")
    print(orjson.dumps({"webhooks_per_s": round(delivered / took)}).decode())
    return 0 if delivered >= args.count else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
