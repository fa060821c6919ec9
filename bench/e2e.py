"""End-to-end benchmark: provider callbacks in, merchant webhooks out (bounded; 127.0.0.1 only).

For each ``--rates`` value and ``--layouts`` entry this starts, from scratch:

- payhook: ``single`` is one ``payhook run`` process; ``split`` is ``payhook ingress`` x2 (or
  ``--ingresses``) on one port (``PAYHOOK_LISTEN_REUSE_PORT``), ``payhook worker ledger``,
  ``payhook relay``, ``payhook worker webhooks`` and ``payhook admin``, each with its own
  ``PAYHOOK_HEALTH_PORT``, started once every ``/readyz`` answers 200; ``workers`` is
  ``split`` with the ledger, relay and webhook workers in one ``payhook run --roles …``
  process. Its own database (``payhook_bench_e2e``, recreated and migrated) and broker
  namespace (deleted afterwards).
- a merchant (its own process: HTTP/1.1 on httptools and uvloop) that answers 200 at once and
  records the arrival time of every webhook with its ``webhook-id`` and the callback's
  transaction id;
- ``--senders`` open-loop sender processes: callback ``i`` is due at ``t0 + i / rate`` whatever
  the answers so far, round-robin over Paysera, Paygol, PayCore and Paypro (Paysepro is held
  until its order is registered, so it is left out), every one signed beforehand and written
  as raw HTTP/1.1 on keep-alive connections, one request at a time on each: ``--connections``
  per sender at first, another whenever all are busy (as a provider would), up to
  ``--max-connections``. A callback finding none free waits: that is the sender's lag, and the
  run says whether the sender's CPU or payhook's answers were the limit. A sender gives up 5 s
  after its last callback was due; what it never sent is reported.

Per run it prints the achieved send rate, acked/sent, ack p50/p99 (from the moment the request
was written), callback → webhook p50/p99/max (send time matched by transaction id), webhooks
received vs. expected (the events the ledger wrote) and duplicates, the backlog when sending
ended (queue depths by a passive declare on a fresh channel, unpublished outbox rows) and the
time to drain it, CPU seconds (``/proc/<pid>/stat``), what the scheduler saw (processes
waiting for a CPU, context switches, the machine's idle and steal time) and RSS per process
(payhook roles, Postgres backends by role, RabbitMQ, merchant, senders). RabbitMQ's
confirmed-publish ceiling is measured at the start of every repetition as the reference;
rates are also given as a ratio of it. With ``pg_stat_statements`` preloaded on the server
(``shared_preload_libraries``) it also counts the SQL statements per delivered webhook.

    PAYHOOK_DATABASE_URL=… PAYHOOK_AMQP_URL=… .venv/bin/python bench/e2e.py \
        --rates 250,500,1000,2000 --seconds 30 --layouts single,split --repeat 2

Diagnosis: ``--watch 3`` prints the backlog and the ingress's own view (from its /metrics:
confirms awaited, mean ack inside the handler) every 3 s; ``--py-spy DIR`` records every payhook
process (py-spy, raw) and prints where each spends its samples; ``--layouts ingress`` runs the
two ingress processes alone; ``--max-in-flight N`` sets the merchant's concurrency limit.

Each run stops by itself (``--seconds`` of sending, at most ``--drain-timeout`` of draining)
and cleans up its processes, queues and database. ``--database NAME`` runs on that existing
database instead (say, one ``bench/ledger_growth.py`` filled with millions of payments): it is
migrated, never recreated or dropped, and keeps what the run wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import broker_counts
import orjson
from ingress_ceiling import (
    Sched,
    broker_ceiling,
    by_module,
    callback_message_size,
    cpu_of,
    loopback,
    machine_cpu,
    rss_of,
    sched_of,
    spread,
    start_py_spy,
)
from ingress_load import PAYHOOK, REPO, _fresh_database, _percentile, _wait_http
from memory import RssSeries, sample_rss

from contracts.topology import Topology
from ingress.providers import PROVIDERS
from ingress.providers.base import SimulatedPayment
from payhook.config_files import load_config

DATABASE = "payhook_bench_e2e"
SECRETS = REPO / "deploy" / "dev-secrets"
# provider, account, amount, currency: what the sample accounts accept
MIX: tuple[tuple[str, str, str, str], ...] = (
    ("paysera", "main", "12.50", "EUR"),
    ("paygol", "main", "12.50", "EUR"),
    ("paycore", "main", "12.50", "EUR"),
    ("paypro", "idr", "125000", "IDR"),
)
SCHEDULE = (0, 3600, 10800, 86400)

_CONFIG = """
[webhooks]
schedule = [0, 3600, 10800, 86400]

[admin]
tokens = ["file:{secrets}/admin-token"]

[merchants.shop]
webhook_url = "http://127.0.0.1:{merchant_port}/hooks"
secrets = ["file:{secrets}/shop-webhook-secret"]
events = ["*"]
allow_private = true
{merchant_extra}

[providers.paysera.main]
merchant = "shop"
project_id = "123456"
password = "file:{secrets}/paysera-password"

[providers.paygol.main]
merchant = "shop"
service_id = "123"
secret = "file:{secrets}/paygol-secret"

[providers.paycore.main]
merchant = "shop"
live_key = "file:{secrets}/paycore-live-key"
test_key = "file:{secrets}/paycore-test-key"

[providers.paypro.idr]
merchant = "shop"
app_secret = "file:{secrets}/paypro-app-secret"
currency = "IDR"
salt_position = "either"
kind = "payment"
"""


def _run_loop(main: Callable[[], Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


# -- the sender (its own process) ------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time, minimal response parsing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: Callable[[int], None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes, done: Callable[[int], None]) -> None:
        assert self.transport is not None
        self.done = done
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.done is None:
            return
        head = bytes(self.buffer[:end]).lower() + b"\r\n"
        at = head.find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        done, self.done = self.done, None
        done(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None:
            done, self.done = self.done, None
            done(0)


def build_payloads(
    config_path: str, port: int, total: int, index: int, senders: int, prefix: str
) -> tuple[list[int], list[bytes]]:
    """The raw HTTP requests of this sender's share: callback ``i`` for ``i % senders == index``."""
    config = load_config(config_path)
    accounts = [(PROVIDERS[p], config.account(p, a), a, amt, cur) for p, a, amt, cur in MIX]
    numbers: list[int] = []
    payloads: list[bytes] = []
    for i in range(index, total, senders):
        module, account, name, amount, currency = accounts[i % len(accounts)]
        assert account is not None
        payment = SimulatedPayment(f"O{prefix}{i}", amount, currency, "succeeded", f"{prefix}{i}")
        request = module.simulate(account, payment)
        target = f"/callbacks/{module.name}/{name}"
        if request.query_string:
            target += "?" + request.query_string
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items()]
        if request.body or request.method == "POST":
            lines.append(f"Content-Length: {len(request.body)}")
        numbers.append(i)
        payloads.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
    return numbers, payloads


def _write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


async def sender_main(spec: dict[str, Any]) -> None:
    rate, total = float(spec["rate"]), int(spec["total"])
    numbers, payloads = build_payloads(
        spec["config"], spec["port"], total, spec["index"], spec["senders"], spec["prefix"]
    )
    loop = asyncio.get_running_loop()
    free: deque[_Connection] = deque()

    async def connect() -> _Connection:
        _, protocol = await loop.create_connection(_Connection, "127.0.0.1", spec["port"])
        return protocol

    for _ in range(spec["connections"]):
        free.append(await connect())
    opened, waited = spec["connections"], 0
    count = len(payloads)
    written = [0.0] * count
    answered = [0.0] * count
    status = [0] * count
    available = asyncio.Event()
    idle = asyncio.Event()
    outstanding = 0
    reconnects = 0
    print("READY", flush=True)
    t0 = float(await loop.run_in_executor(None, sys.stdin.readline))
    usage = os.times()
    cpu_start = usage.user + usage.system

    def finisher(k: int, conn: _Connection) -> Callable[[int], None]:
        def done(code: int) -> None:
            nonlocal outstanding
            answered[k] = time.time()
            status[k] = code
            outstanding -= 1
            if not outstanding:
                idle.set()
            free.append(conn)
            available.set()

        return done

    give_up = t0 + total / rate + float(spec["grace"])
    for k, i in enumerate(numbers):
        if time.time() > give_up:
            break  # the rest stays unsent: the system (or this sender) could not keep up
        delay = t0 + i / rate - time.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        if not free and opened < spec["max_connections"]:
            opened += 1  # as a provider would: another connection when all are busy
            free.append(await connect())
        if not free:
            waited += 1
        while not free:
            available.clear()
            await available.wait()
        conn = free.pop()
        if conn.closed:
            reconnects += 1
            conn = await connect()
        outstanding += 1
        written[k] = time.time()
        conn.send(payloads[k], finisher(k, conn))
    if outstanding:
        idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(idle.wait(), 15)
    usage = os.times()
    result = {
        "numbers": numbers,
        "written": written,
        "answered": answered,
        "status": status,
        "reconnects": reconnects,
        "opened": opened,
        "waited": waited,
        "cpu_s": usage.user + usage.system - cpu_start,
    }
    _write(spec["out"], orjson.dumps(result))
    print("DONE", flush=True)


# -- the merchant (its own process) ----------------------------------------------------------


class _Merchant(asyncio.Protocol):
    """One keep-alive connection to the merchant: HTTP/1.1 parsed by httptools (as payhook's
    own client parses answers), a fixed 200 for ``POST /hooks``, and ``GET /stats`` and
    ``GET /dump`` for the run. Lean on purpose, like the senders: it shares the 2 cores with
    what it measures, and aiohttp cost it ~3 times the CPU per webhook."""

    records: ClassVar[dict[str, list[Any]]] = {
        "arrival": [], "id": [], "txid": [], "callback_id": []
    }  # fmt: skip
    seen: ClassVar[set[str]] = set()

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.webhook_id = ""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.webhook_id, self.body = b"", "", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"webhook-id":
            self.webhook_id = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        records = self.records
        if self.url == b"/hooks":
            records["arrival"].append(time.time())
            records["id"].append(self.webhook_id)
            self.seen.add(self.webhook_id)
            data = orjson.loads(b"".join(self.body)).get("data") or {}
            records["txid"].append(str(data.get("transaction_id")))
            records["callback_id"].append(str(data.get("callback_id")))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if self.url == b"/stats":
            payload = orjson.dumps({"received": len(records["id"]), "unique": len(self.seen)})
        elif self.url == b"/dump":
            payload = orjson.dumps(records)
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self.transport.write(head % len(payload) + payload)


async def merchant_main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Merchant, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.close()


# -- process bookkeeping ---------------------------------------------------------------------


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def _profiles(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.txt"))


def _postmaster_pid(data_dir: str) -> int:
    return int(Path(data_dir, "postmaster.pid").read_text().split()[0])


def _listener_pid(port: int) -> int | None:
    """The process holding the listening TCP socket on 127.0.0.1:``port`` (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    rss: dict[str, float]
    sched: dict[str, Sched] = field(default_factory=dict)
    machine: dict[str, float] = field(default_factory=dict)


@dataclass
class Processes:
    """Every process whose CPU the run accounts for, by name."""

    named: dict[str, int] = field(default_factory=dict)
    postmaster: int | None = None
    rabbitmq: int | None = None
    database: str = DATABASE  # backends of this database are attributed to roles

    async def snapshot(self, conn: asyncpg.Connection[Any] | None) -> Snapshot:
        cpu = {name: cpu_of(pid) for name, pid in self.named.items()}
        rss = {name: rss_of(pid) for name, pid in self.named.items()}
        sched = {name: sched_of(pid) for name, pid in self.named.items()}
        if self.rabbitmq is not None:
            pids = [self.rabbitmq, *_children(self.rabbitmq)]
            cpu["rabbitmq"] = sum(cpu_of(p) for p in pids)
            rss["rabbitmq"] = sum(rss_of(p) for p in pids)
            sched["rabbitmq"] = sum((sched_of(p) for p in pids), Sched())
        if self.postmaster is not None:
            roles: dict[int, str] = {}
            if conn is not None:
                rows = await conn.fetch(
                    "SELECT pid, application_name, datname FROM pg_stat_activity"
                )
                for row in rows:
                    if row["datname"] == self.database:
                        roles[row["pid"]] = "postgres:" + (row["application_name"] or "other")
            pids = [self.postmaster, *_children(self.postmaster)]
            for pid in pids:
                name = roles.get(pid, "postgres:server")
                cpu[name] = cpu.get(name, 0.0) + cpu_of(pid)
                sched[name] = sched.get(name, Sched()) + sched_of(pid)
            rss["postgres"] = sum(rss_of(p) for p in pids)
        return Snapshot(time.time(), cpu, rss, sched, machine_cpu())


def _scheduler_line(before: Snapshot, at_end: Snapshot) -> str:
    """While sending, per second: how long each process waited, runnable, for a CPU, and its
    context switches (voluntary: it had nothing to do and blocked; involuntary: preempted with
    work left). Waiting summed over processes is the mean number of them queued for a CPU."""
    seconds = max(at_end.at - before.at, 1e-9)
    delta = {k: at_end.sched[k] - before.sched.get(k, Sched()) for k in at_end.sched}
    busy = sorted(
        (k for k in delta if delta[k].run_s >= 0.05 * seconds), key=lambda k: -delta[k].wait_s
    )
    queued = sum(d.wait_s for d in delta.values()) / seconds
    machine = ", ".join(
        f"{state} {(at_end.machine.get(state, 0.0) - before.machine.get(state, 0.0)) / seconds:.2f}"
        for state in ("user", "system", "idle", "steal")
    )
    return (
        f"    scheduler while sending: machine cores {machine};"
        f" {queued:.2f} processes waiting for a CPU on average;"
        " per process, s waited per s (context switches/s voluntary/involuntary): "
        + "; ".join(
            f"{k} {delta[k].wait_s / seconds:.2f}"
            f" ({delta[k].voluntary / seconds:.0f}/{delta[k].involuntary / seconds:.0f})"
            for k in busy
        )
    )


def _spawn(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([PAYHOOK, *args], env=env, stdout=out, stderr=out)


def _check_alive(procs: Sequence[subprocess.Popen[Any]], named: Mapping[str, int]) -> None:
    """Every process of the run is still there: a role that exited makes the run invalid."""
    names = {pid: name for name, pid in named.items()}
    gone = [
        f"{names.get(p.pid, p.pid)} (exit {p.returncode})" for p in procs if p.poll() is not None
    ]
    if gone:
        raise RuntimeError(f"processes exited during the run: {', '.join(gone)}")


def _stop(procs: Sequence[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port nobody listens on, and not one handed out before in this process: the kernel
    may give a just-closed port 0 again, and two roles on one health port made one of them
    exit at start while ``/readyz`` on that port still answered (seen once: a run without a
    webhook worker)."""
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# -- one run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    layout: str
    rate: float
    ceiling: float
    achieved: float
    sent: int
    acked: int
    ack_p50: float
    ack_p99: float
    lag_p99: float
    e2e_p50: float
    e2e_p99: float
    e2e_max: float
    received: int
    unique: int
    expected: int
    backlog: dict[str, int]
    drain_s: float | None
    cpu: dict[str, float]
    sender_limited: bool
    statements: dict[str, float]
    broker: dict[str, float] = field(default_factory=dict)


async def _backlog(
    amqp_url: str, topology: Topology, conn: asyncpg.Connection[Any]
) -> dict[str, int]:
    depths: dict[str, int] = {}
    connection = await aio_pika.connect(amqp_url)
    try:
        for queue in (topology.ledger_queue, topology.webhooks_queue):
            channel = await connection.channel()  # fresh: a failed passive declare closes it
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                continue  # not declared in this layout
            depths[queue.rsplit(".", 1)[1]] = declared.declaration_result.message_count or 0
            await channel.close()
    finally:
        await connection.close()
    depths["outbox"] = await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NULL")
    return depths


async def confirm_probe(amqp_url: str, until: float, every: float = 0.05) -> list[float]:
    """Confirm latencies (s) of one persistent publish every ``every`` s to a quorum queue of
    its own, until ``until`` (wall clock): how fast the broker confirms while payhook runs."""
    name = f"e2eprobe{secrets.token_hex(4)}"
    latencies: list[float] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        body = b"x" * 960
        while time.time() < until:
            started = time.perf_counter()
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=name)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(every)
        await channel.queue_delete(name)
    finally:
        await connection.close()
    return sorted(latencies)


def _metric_sums(text: str, names: Sequence[str]) -> dict[str, float]:
    """Sum of every sample of each metric in ``names`` (all label sets) in a /metrics page."""
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


_WATCHED = (
    "payhook_ingress_confirms_in_flight",
    "payhook_ingress_ack_seconds_sum",
    "payhook_ingress_ack_seconds_count",
)


async def watch(
    every: float,
    until: Callable[[], bool],
    health_ports: Sequence[int],
    merchant_port: int,
    amqp_url: str,
    topology: Topology,
    conn: asyncpg.Connection[Any],
) -> None:
    """Every ``every`` s: backlog, webhooks so far, and the ingress's own view (its /metrics:
    confirms awaited, mean ack time measured inside the handler) to compare with the sender's."""
    import aiohttp

    started = time.time()
    last = dict.fromkeys(_WATCHED, 0.0)
    async with aiohttp.ClientSession() as session:
        while not until():
            sums = dict.fromkeys(_WATCHED, 0.0)
            for port in health_ports:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        if resp.status == 200:
                            for k, v in _metric_sums(await resp.text(), _WATCHED).items():
                                sums[k] += v
            count = sums[_WATCHED[2]] - last[_WATCHED[2]]
            mean = (sums[_WATCHED[1]] - last[_WATCHED[1]]) / count * 1000 if count else 0.0
            last = sums
            backlog = await _backlog(amqp_url, topology, conn)
            stats = await _merchant_stats(merchant_port)
            print(
                f"    t+{time.time() - started:4.0f} s: "
                + ", ".join(f"{k} {v}" for k, v in backlog.items())
                + f"; webhooks {stats['unique']}; ingress: {count / every:,.0f} acked/s,"
                f" mean ack {mean:.0f} ms in the handler,"
                f" {sums[_WATCHED[0]]:.0f} confirms awaited",
                flush=True,
            )
            await asyncio.sleep(every)


async def _merchant_stats(port: int) -> dict[str, int]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/stats") as resp:
            stats: dict[str, int] = await resp.json()
            return stats


async def _merchant_dump(port: int) -> dict[str, list[Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/dump") as resp:
            records: dict[str, list[Any]] = orjson.loads(await resp.read())
            return records


def _with_app_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=f"{query}application_name={name}"))


async def _statement_stats(conn: asyncpg.Connection[Any]) -> dict[str, int] | None:
    try:
        rows = await conn.fetch(
            "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = current_database()"
        )
    except asyncpg.PostgresError:
        return None
    return {row["query"]: row["calls"] for row in rows}


def _role_of_statement(query: str) -> str:
    q = query.lower()
    if "webhook_" in q:
        return "webhooks"
    if "published_at" in q:
        return "relay"
    if q.strip() in ("begin", "commit", "rollback") or q.startswith(("begin", "commit")):
        return "BEGIN/COMMIT (all roles)"
    if q.startswith(("select pg_advisory_unlock_all", "reset all", "unlisten", "close all")):
        return "pool-release reset (asyncpg, all roles)"
    if "pg_stat" in q or "pg_database" in q:
        return "bench"
    return "ledger/admin/other"


async def run_once(
    args: argparse.Namespace,
    layout: str,
    rate: float,
    ceiling: float,
    server_url: str,
    amqp_url: str,
    work: Path,
) -> RunResult:
    namespace = f"e2e{secrets.token_hex(4)}"
    topology = Topology(namespace)
    prefix = secrets.token_hex(3)
    if args.database:
        database_url = urlunsplit(urlsplit(server_url)._replace(path=f"/{args.database}"))
    else:
        database_url = await _fresh_database(server_url, DATABASE)
    merchant_port, listen_port = _free_port(), _free_port()
    config_path = work / f"payhook-{namespace}.toml"
    extra = f"max_in_flight = {args.max_in_flight}" if args.max_in_flight else ""
    config_path.write_text(
        _CONFIG.format(secrets=SECRETS, merchant_port=merchant_port, merchant_extra=extra)
    )
    load_config(str(config_path))  # fail early on a bad file
    env = {
        **os.environ,
        "PAYHOOK_DATABASE_URL": database_url,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_CONFIG_PATH": str(config_path),
        "PAYHOOK_LISTEN_PORT": str(listen_port),
        "PAYHOOK_ADMIN_PORT": str(_free_port()),
        "PAYHOOK_LOG_LEVEL": args.log_level,
        "PAYHOOK_METRICS": args.metrics,
    }
    log = args.log_file or os.devnull
    await asyncio.to_thread(
        subprocess.run, [PAYHOOK, "migrate"], env=env, check=True, capture_output=True
    )
    roles: list[tuple[str, list[str]]]
    edge = [(f"ingress-{n}", ["ingress"]) for n in range(1, args.ingresses + 1)]
    if layout == "single":
        roles = [("payhook-run", ["run", "--no-migrate"])]
    elif layout == "ingress":  # a diagnosis: the edge alone, the broker just stores
        roles = edge
    elif layout == "workers":  # split, but the three workers share one process
        roles = [
            *edge,
            ("workers", ["run", "--no-migrate", "--roles", "worker.ledger,relay,worker.webhooks"]),
            ("admin", ["admin"]),
        ]
    else:
        roles = [
            *edge,
            ("ledger", ["worker", "ledger"]),
            ("relay", ["relay"]),
            ("webhooks", ["worker", "webhooks"]),
            ("admin", ["admin"]),
        ]
    started: list[subprocess.Popen[Any]] = []
    procs = Processes(
        postmaster=None,
        rabbitmq=_listener_pid(urlsplit(amqp_url).port or 5672),
        database=args.database or DATABASE,
    )
    admin = await asyncpg.connect(server_url)
    try:
        data_dir = await admin.fetchval("SHOW data_directory")
        procs.postmaster = _postmaster_pid(data_dir)
    except (OSError, asyncpg.PostgresError, ValueError):
        procs.postmaster = _listener_pid(urlsplit(server_url).port or 5432)
    await admin.close()
    conn = await asyncpg.connect(database_url)
    # A prefilled database already holds events: only this run's are expected as webhooks.
    events_before = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events")
    senders: list[subprocess.Popen[bytes]] = []
    finished = False
    watcher: asyncio.Task[None] | None = None
    rss_series, rss_done = RssSeries(), asyncio.Event()
    try:
        pg_stats = True
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
        except asyncpg.PostgresError:
            pg_stats = False
        merchant = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, __file__, "--role", "merchant", "--port", str(merchant_port)],
            stdout=subprocess.PIPE,
        )
        started.append(merchant)
        procs.named["merchant"] = merchant.pid
        health_ports = []
        for name, command in roles:
            health = _free_port()
            health_ports.append(health)
            env_role = {
                **env,
                "PAYHOOK_HEALTH_PORT": str(health),
                "PAYHOOK_DATABASE_URL": _with_app_name(database_url, name),
            }
            if name.startswith("ingress"):
                env_role["PAYHOOK_LISTEN_REUSE_PORT"] = "true"
            proc = _spawn(command, env_role, log)
            started.append(proc)
            procs.named[name] = proc.pid
        assert merchant.stdout is not None
        await asyncio.wait_for(asyncio.to_thread(merchant.stdout.readline), 30)
        for port in health_ports:
            await _wait_http(f"http://127.0.0.1:{port}/readyz", patience=60)
        await _wait_http(f"http://127.0.0.1:{listen_port}/readyz")
        _check_alive(started, procs.named)

        total = int(rate * args.seconds)
        for n in range(args.senders):
            spec = {
                "config": str(config_path), "port": listen_port, "rate": rate, "total": total,
                "index": n, "senders": args.senders, "prefix": prefix,
                "connections": args.connections, "max_connections": args.max_connections,
                "grace": 5.0,
                "out": str(work / f"sender-{namespace}-{n}.json"),
            }  # fmt: skip
            sender = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, __file__, "--role", "sender", "--spec", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            senders.append(sender)
            procs.named[f"sender-{n + 1}"] = sender.pid
        for sender in senders:
            assert sender.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(sender.stdout.readline), 120)
            if line.strip() != b"READY":
                raise RuntimeError("a sender did not start")
        if pg_stats:
            await conn.execute("SELECT pg_stat_statements_reset()")
        before = await procs.snapshot(conn)
        counts_before = await asyncio.to_thread(broker_counts.read)
        spies = []
        if args.py_spy:
            spy_dir = Path(args.py_spy) / f"{layout}-{rate:g}-{namespace}"
            spies = [
                start_py_spy(pid, spy_dir, args.seconds, name)
                for name, pid in procs.named.items()
                if not name.startswith(("sender", "merchant"))
            ]
        t0 = time.time() + 0.3
        for sender in senders:
            assert sender.stdin is not None
            sender.stdin.write(f"{t0!r}\n".encode())
            sender.stdin.flush()
        if args.rss_every:

            async def rss_now() -> dict[str, float]:
                return (await procs.snapshot(None)).rss

            rss_sampler = asyncio.create_task(
                sample_rss(args.rss_every, rss_done, rss_now, rss_series)
            )
        if args.watch:
            watch_conn = await asyncpg.connect(database_url)
            watcher = asyncio.create_task(
                watch(
                    args.watch, lambda: finished, health_ports, merchant_port, amqp_url,
                    topology, watch_conn,
                )
            )  # fmt: skip
        probe = await confirm_probe(amqp_url, t0 + args.seconds)
        await asyncio.sleep(max(0.0, t0 + args.seconds - time.time()))
        backlog = await _backlog(amqp_url, topology, conn)
        at_end = await procs.snapshot(conn)
        _check_alive(started, procs.named)
        sent_stats = await _merchant_stats(merchant_port)
        for sender in senders:
            assert sender.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(sender.stdout.readline), 90)
            if line.strip() != b"DONE":
                raise RuntimeError("a sender failed (see its traceback above)")
            await asyncio.to_thread(sender.wait, 10)
        for spy in spies:
            await asyncio.to_thread(spy.wait, 60)
        results = [
            orjson.loads((work / f"sender-{namespace}-{n}.json").read_bytes())
            for n in range(args.senders)
        ]
        numbers = [i for r in results for i in r["numbers"]]
        written = [t for r in results for t in r["written"]]
        answered = [t for r in results for t in r["answered"]]
        status = [s for r in results for s in r["status"]]
        acked = sum(1 for s in status if s == 200)
        drain_start = t0 + args.seconds
        drained_at: float | None = None
        while layout != "ingress" and time.time() - drain_start < args.drain_timeout:
            stats = await _merchant_stats(merchant_port)
            if stats["unique"] >= acked:
                left = await _backlog(amqp_url, topology, conn)
                if not any(left.values()):
                    drained_at = time.time()
                    break
            await asyncio.sleep(0.2)
        finished = True
        if args.rss_every:
            rss_done.set()
            await rss_sampler
        if watcher is not None:
            await watcher
            await watch_conn.close()
        after = await procs.snapshot(conn)
        counts_after = await asyncio.to_thread(broker_counts.read)
        expected = await conn.fetchval("SELECT count(*) FROM events WHERE seq > $1", events_before)
        statements = await _statement_stats(conn) if pg_stats else None
        records = await _merchant_dump(merchant_port)
    finally:
        finished = True
        rss_done.set()
        _stop(senders)
        _stop(started[1:])  # payhook first, then the merchant
        _stop(started[:1])
        await conn.close()
        await _delete_namespace(amqp_url, topology)

    # -- figures
    sends = sorted(w for w in written if w)
    elapsed = (sends[-1] - sends[0]) if len(sends) > 1 else args.seconds
    achieved = (len(sends) - 1) / elapsed if elapsed > 0 else 0.0
    acks = sorted(a - w for a, w, s in zip(answered, written, status, strict=True) if s == 200)
    lags = sorted(w - (t0 + i / rate) for i, w in zip(numbers, written, strict=True) if w)
    sent_at = {f"{prefix}{i}": w for i, w in zip(numbers, written, strict=True)}
    first: dict[str, float] = {}
    for arrival, txid in zip(records["arrival"], records["txid"], strict=True):
        if txid in sent_at and (txid not in first or arrival < first[txid]):
            first[txid] = arrival
    e2e = sorted(first[t] - sent_at[t] for t in first)
    received = len(records["id"])
    unique = len(set(records["id"]))
    cpu = {k: after.cpu.get(k, 0.0) - before.cpu.get(k, 0.0) for k in after.cpu}
    sending_cpu = {k: at_end.cpu.get(k, 0.0) - before.cpu.get(k, 0.0) for k in at_end.cpu}
    lag_p99 = _percentile(lags, 0.99)
    sender_cpu = max((r["cpu_s"] for r in results), default=0.0)
    sender_limited = achieved < 0.97 * rate or lag_p99 > 0.05
    opened = sum(r["opened"] for r in results)
    waited = sum(r["waited"] for r in results)
    why = ""
    if sender_limited:
        if sender_cpu > 0.8 * max(elapsed, 1e-9):
            why = "SENDER-LIMITED: a sender process used a whole core"
        elif waited:
            why = (
                f"OFFERED RATE NOT HELD: all {opened} connections were waiting for answers"
                f" {waited} times (payhook answers too slowly, not the sender's CPU)"
            )
        else:
            why = "OFFERED RATE NOT HELD: sends started late (the CPU was busy elsewhere)"
    result = RunResult(
        layout, rate, ceiling, achieved, len(sends), acked,
        _percentile(acks, 0.5) * 1000, _percentile(acks, 0.99) * 1000, lag_p99 * 1000,
        _percentile(e2e, 0.5) * 1000, _percentile(e2e, 0.99) * 1000,
        (e2e[-1] * 1000 if e2e else float("nan")),
        received, unique, expected, backlog,
        (drained_at - drain_start) if drained_at is not None else None,
        cpu, sender_limited, {},
    )  # fmt: skip

    # -- report
    print(
        f"  [{layout} @ {rate:,.0f}/s] sent {len(sends)}"
        + (f" ({len(written) - len(sends)} never sent)" if len(written) > len(sends) else "")
        + f" at {achieved:,.0f}/s"
        f" ({achieved / rate * 100:.0f} % of offered, {achieved / ceiling:.2f} x broker ceiling);"
        f" acked {acked}/{len(sends)}; ack p50 {result.ack_p50:.1f} ms,"
        f" p99 {result.ack_p99:.1f} ms;"
        f" sender lag p99 {result.lag_p99:.1f} ms"
        + f"; {opened} connections; broker confirm probe p50"
        f" {_percentile(probe, 0.5) * 1000:.1f} ms, p99 {_percentile(probe, 0.99) * 1000:.1f} ms"
        + (f" -- {why}" if sender_limited else ""),
        flush=True,
    )
    print(
        f"    callback->webhook p50 {result.e2e_p50:.0f} ms, p99 {result.e2e_p99:.0f} ms,"
        f" max {result.e2e_max:.0f} ms; webhooks {unique} unique of {expected} expected"
        f" (events), {received - unique} duplicates, {len(first)} of {acked} acked callbacks"
        f" matched; {sent_stats['unique']} had arrived when sending ended"
    )
    drain = f"{result.drain_s:.1f} s" if result.drain_s is not None else (
        f"not drained within {args.drain_timeout:.0f} s"
    )  # fmt: skip
    print(
        "    backlog when sending ended: "
        + ", ".join(f"{k} {v}" for k, v in backlog.items())
        + f"; drained {drain} after sending ended"
    )
    window = after.at - before.at
    send_window = at_end.at - before.at
    print(
        f"    CPU s, sending ({send_window:.0f} s) + draining ({window - send_window:.0f} s);"
        f" us per acked callback:"
    )
    names = sorted(cpu, key=lambda k: -cpu[k])
    print(
        "      "
        + "; ".join(
            f"{k} {sending_cpu.get(k, 0.0):.1f}+{cpu[k] - sending_cpu.get(k, 0.0):.1f}"
            f" ({cpu[k] * 1e6 / max(acked, 1):.0f})"
            for k in names
            if cpu[k] >= 0.05
        )
        + f"; busiest sender {sender_cpu / max(elapsed, 1e-9):.2f} cores"
    )
    print(_scheduler_line(before, at_end))
    print(
        "    RSS MiB start->end: "
        + ", ".join(
            f"{k} {before.rss.get(k, 0):.0f}->{after.rss.get(k, 0):.0f}"
            for k in sorted(after.rss)
            if not k.startswith("sender")
        )
    )
    if args.rss_every:
        names = sorted(k for k in after.rss if not k.startswith("sender"))
        print("\n".join(rss_series.report(args.seconds, names)))
    if counts_before is not None and counts_after is not None:
        counts = broker_counts.difference(counts_before, counts_after)
        for key in ("published", "routed", "confirmed"):
            counts[key] -= len(probe)  # the confirm probe's own messages
        per = max(acked, 1)
        result.broker = {k: v / per for k, v in counts.items()}
        print(
            "    broker per acked callback: "
            + ", ".join(f"{k} {counts[k] / per:.2f}" for k in broker_counts.COUNTERS)
            + "; broker's socket reads from (writes to) each role: "
            + ", ".join(
                f"{k[5:]} {v / per:.2f} ({counts['send:' + k[5:]] / per:.2f})"
                for k, v in sorted(counts.items())
                if k.startswith("recv:") and k[5:].startswith("payhook")
            )
        )
    if statements is not None:
        delivered = max(unique, 1)
        by_role: dict[str, int] = {}
        for query, calls in statements.items():
            role = _role_of_statement(query)
            by_role[role] = by_role.get(role, 0) + calls
        result.statements = {k: v / delivered for k, v in by_role.items()}
        print(
            "    SQL statements per delivered webhook (pg_stat_statements): "
            + ", ".join(f"{k} {v / delivered:.2f}" for k, v in sorted(by_role.items()))
        )
        top = sorted(
            ((c, q) for q, c in statements.items() if _role_of_statement(q) == "webhooks"),
            reverse=True,
        )
        for calls, query in top:
            text = " ".join(query.split())
            print(f"      {calls / delivered:5.2f}  {text[:110]}")

    if args.py_spy:
        for path in _profiles(Path(args.py_spy) / f"{layout}-{rate:g}-{namespace}"):
            shares = by_module(path)
            hot = ", ".join(f"{k} {v * 100:.0f} %" for k, v in list(shares.items())[:10])
            print(f"    py-spy {path.stem}: {hot}")

    # -- clean up
    if not args.keep and not args.database:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        finally:
            await admin.close()
    for n in range(args.senders):
        (work / f"sender-{namespace}-{n}.json").unlink(missing_ok=True)
    return result


async def _delete_namespace(amqp_url: str, topology: Topology) -> None:
    declarations = topology.declarations((*SCHEDULE, 5.0))
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in declarations.queues:
            await channel.queue_delete(queue.name)
        for exchange in declarations.exchanges:
            await channel.exchange_delete(exchange.name)


# -- main ------------------------------------------------------------------------------------


def _summary(results: list[RunResult]) -> None:
    print("summary, min / median / max over repetitions:")
    keys = sorted({(r.layout, r.rate) for r in results}, key=lambda k: (k[1], k[0]))
    for layout, rate in keys:
        rs = [r for r in results if r.layout == layout and r.rate == rate]
        drains = [r.drain_s for r in rs if r.drain_s is not None]
        undrained = sum(1 for r in rs if r.drain_s is None)
        print(
            f"  {layout:<6} @ {rate:>6,.0f}/s: achieved {spread([r.achieved for r in rs])}/s"
            f" ({spread([r.achieved / r.ceiling for r in rs], '{:.2f}')} x ceiling);"
            f" ack p99 {spread([r.ack_p99 for r in rs], '{:.1f}')} ms;"
            f" callback->webhook p50 {spread([r.e2e_p50 for r in rs])} ms,"
            f" p99 {spread([r.e2e_p99 for r in rs])} ms, max {spread([r.e2e_max for r in rs])} ms;"
            f" webhooks/expected {spread([r.unique / max(r.expected, 1) for r in rs], '{:.3f}')};"
            f" duplicates {spread([float(r.received - r.unique) for r in rs])};"
            f" drain {spread(drains, '{:.1f}')} s"
            + (f" ({undrained} not drained)" if undrained else "")
            + (" [offered rate not held in some runs]" if any(r.sender_limited for r in rs) else "")
        )
        roles = sorted({k for r in rs for k in r.cpu}, key=lambda k: -statistics.median(
            [r.cpu.get(k, 0.0) * 1e6 / max(r.acked, 1) for r in rs]))  # fmt: skip

        def per_callback(role: str, rs: list[RunResult] = rs) -> float:
            return statistics.median([r.cpu.get(role, 0.0) * 1e6 / max(r.acked, 1) for r in rs])

        print(
            "      CPU us per acked callback (median): "
            + ", ".join(
                f"{k} {per_callback(k):.0f}"
                for k in roles
                if statistics.median([r.cpu.get(k, 0.0) for r in rs]) >= 0.05
            )
        )


async def main(args: argparse.Namespace) -> int:
    server = loopback(
        os.environ.get("PAYHOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/payhook")
    )
    amqp_url = loopback(os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/"))
    rates = [float(r) for r in args.rates.split(",")]
    layouts = args.layouts.split(",")
    if not all(layout in ("single", "split", "workers", "ingress") for layout in layouts):
        raise SystemExit(
            "--layouts: single, split, workers (split with the ledger, relay and webhook"
            " workers in one process) or ingress (the edge alone), comma-separated"
        )
    # 15 minutes at most: long enough for the memory-flatness run (--rss-every), still bounded.
    if not 1 <= args.seconds <= 900 or any(not 1 <= r <= 20000 for r in rates):
        raise SystemExit("--seconds 1..900 and rates 1..20000/s: keep runs bounded")
    size = callback_message_size(load_config(str(REPO / "deploy" / "payhook.toml")))
    print(
        f"e2e: rates {', '.join(f'{r:g}' for r in rates)}/s x {args.seconds:g} s, layouts"
        f" {', '.join(layouts)} ({args.ingresses} ingress processes), {args.repeat}"
        f" repetition(s); {args.senders} sender(s) x"
        f" {args.connections} connections; merchant max_in_flight"
        f" {args.max_in_flight or 'default (16)'}; log level {args.log_level}, metrics"
        f" {args.metrics}; {os.cpu_count()} cores for everything",
        flush=True,
    )
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="payhook-e2e-") as tmp:
        work = Path(tmp)
        for rep in range(args.repeat):
            reference = await broker_ceiling(amqp_url, args.ceiling_seconds, 256, size)
            print(
                f"repetition {rep + 1}: broker ceiling {reference.rate:,.0f} msg/s ({size} B"
                " persistent, quorum, 256 confirms in flight)",
                flush=True,
            )
            order = layouts if rep % 2 == 0 else layouts[::-1]
            for rate in rates:
                for layout in order:
                    results.append(
                        await run_once(args, layout, rate, reference.rate, server, amqp_url, work)
                    )
    _summary(results)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line, also parsed by bench/ledger_growth.py to run e2e rounds itself."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("main", "sender", "merchant"), default="main")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rates", default="250,500,1000,2000", help="callbacks/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="sending time per run")
    parser.add_argument("--layouts", default="single,split", help="single, split or both")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (interleaved)")
    parser.add_argument("--senders", type=int, default=2, help="sender processes")
    parser.add_argument(
        "--ingresses", type=int, default=2, help="payhook ingress processes (split, workers)"
    )
    parser.add_argument("--connections", type=int, default=16, help="per sender, at first")
    parser.add_argument(
        "--max-connections", type=int, default=256, help="per sender, opened when all are busy"
    )
    parser.add_argument("--watch", type=float, default=0, help="print progress every N s")
    parser.add_argument("--py-spy", metavar="DIR", help="profile every payhook process (raw)")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--max-in-flight", type=int, default=0, help="merchant's; 0: default")
    parser.add_argument("--log-level", default="info", help="PAYHOOK_LOG_LEVEL")
    parser.add_argument("--log-file", help="append payhook's logs here (default: /dev/null)")
    parser.add_argument("--metrics", default="true", help="PAYHOOK_METRICS")
    parser.add_argument("--keep", action="store_true", help="keep the last run's database")
    parser.add_argument(
        "--rss-every", type=float, default=0, help="sample RSS every N s; print growth"
    )
    parser.add_argument(
        "--database", help="run on this existing (e.g. prefilled) database: migrated, kept"
    )
    return parser


def cli() -> int:
    args = build_parser().parse_args()
    if args.role == "sender":
        _run_loop(lambda: sender_main(json.loads(args.spec)))
        return 0
    if args.role == "merchant":
        _run_loop(lambda: merchant_main(args.port))
        return 0
    code: int = _run_loop(lambda: main(args))
    return code


if __name__ == "__main__":
    sys.exit(cli())
