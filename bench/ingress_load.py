"""Ingress load and ledger drain benchmark (bounded; talks only to 127.0.0.1).

Phase 1 starts ``payhook ingress`` alone (``--processes`` of them on one port; no consumer,
so the broker just stores) and sends signed callbacks for ``--duration`` seconds at
``--concurrency`` connections: prints accepted/s, p50/p90/p99 ack latency and errors. The
load comes from ``wrk`` when it is installed (``apt-get install wrk``; it costs a tenth of a
core where a Python client costs a whole one, on the same two cores) and the requests are
GETs, else from an aiohttp client. Phase 2 starts ``payhook worker ledger`` and times how long
it takes to drain what phase 1 accepted, then runs ``payhook ledger check``.

    PAYHOOK_DATABASE_URL=… PAYHOOK_AMQP_URL=… .venv/bin/python bench/ingress_load.py \
        --duration 10 --concurrency 64

Uses its own broker namespace and its own database (``payhook_bench``, recreated), so it
never touches a running installation's data. Needs the servers from scripts/services.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg

from contracts.topology import Topology
from ingress.providers import PROVIDERS
from ingress.providers.base import SimulatedPayment, SimulatedRequest
from payhook.config_files import load_config

REPO = Path(__file__).resolve().parents[1]
PAYHOOK = str(Path(sys.executable).with_name("payhook"))


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _wait_http(url: str, patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


@dataclass
class LoadResult:
    client: str
    accepted: int  # 200 answers: the provider got its ack
    errors: int  # anything else, including connection errors
    elapsed: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


async def _load_python(
    url: str, requests: list[SimulatedRequest], duration: float, concurrency: int
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    index = 0
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal index, errors
        while time.monotonic() < deadline and index < len(requests):
            req = requests[index]
            index += 1
            target = f"{url}?{req.query_string}" if req.query_string else url
            start = time.perf_counter()
            try:
                async with session.request(
                    req.method, target, data=req.body or None, headers=dict(req.headers)
                ) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return LoadResult(
        "aiohttp client",
        len(latencies),
        errors,
        elapsed,
        _percentile(latencies, 0.5) * 1000,
        _percentile(latencies, 0.9) * 1000,
        _percentile(latencies, 0.99) * 1000,
    )


# Each request is the next signed path of the file; done() prints what the bench parses.
_WRK_SCRIPT = """
local paths = {}
local counter = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
request = function()
  counter = counter + 1
  if counter > #paths then wrk.thread:stop() end
  return wrk.format("GET", paths[((counter - 1) % #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), 0, 0))
end
"""


async def _load_wrk(
    wrk: str,
    origin: str,
    path: str,
    requests: list[SimulatedRequest],
    duration: float,
    concurrency: int,
) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        paths = Path(tmp) / "paths.txt"
        paths.write_text("".join(f"{path}?{r.query_string}\n" for r in requests))
        script = Path(tmp) / "paths.lua"
        script.write_text(_WRK_SCRIPT)
        proc = await asyncio.create_subprocess_exec(
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "-s",
            str(script),
            origin,
            "--",
            str(paths),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    line = next((x for x in out.decode().splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.decode()}")
    total, micros, socket_errors, bad_status, p50, p90, p99, _, _ = map(int, line.split()[1:])
    return LoadResult(
        "wrk",
        total - bad_status,
        bad_status + socket_errors,
        micros / 1e6,
        p50 / 1000,
        p90 / 1000,
        p99 / 1000,
    )


async def _queue_depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def _fresh_database(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PAYHOOK, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deploy" / "payhook.toml"))
    parser.add_argument("--provider", default="paysera")
    parser.add_argument("--account", default="main")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--processes", type=int, default=1, help="ingress processes, one port")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    args = parser.parse_args()

    amqp_url = os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/")
    db_server = os.environ.get(
        "PAYHOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/payhook"
    )
    database_url = await _fresh_database(db_server, "payhook_bench")
    namespace = f"bench{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "PAYHOOK_DATABASE_URL": database_url,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_CONFIG_PATH": args.config,
        "PAYHOOK_LISTEN_PORT": str(args.port),
        "PAYHOOK_LOG_LEVEL": "warning",
    }
    await asyncio.to_thread(
        subprocess.run, [PAYHOOK, "migrate"], env=env, check=True, capture_output=True
    )

    config = load_config(args.config)
    account = config.account(args.provider, args.account)
    assert account is not None, f"no account {args.provider}.{args.account} in {args.config}"
    module = PROVIDERS[args.provider]
    print(f"building {args.max_requests} signed {args.provider} callbacks …", flush=True)
    requests = [
        module.simulate(
            account,
            SimulatedPayment(
                order_id=f"B-{i}",
                amount="12.50",
                currency="EUR",
                status="succeeded",
                transaction_id=f"bench-{namespace}-{i}",
            ),
        )
        for i in range(args.max_requests)
    ]

    path = f"/callbacks/{args.provider}/{args.account}"
    url = f"http://127.0.0.1:{args.port}{path}"
    wrk = shutil.which("wrk")
    use_wrk = args.client == "wrk" or (
        args.client == "auto" and wrk is not None and all(r.method == "GET" for r in requests)
    )
    if use_wrk and wrk is None:
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    if args.processes > 1:
        env["PAYHOOK_LISTEN_REUSE_PORT"] = "true"
    ingresses = [_spawn(["ingress"], env) for _ in range(args.processes)]
    try:
        await _wait_http(f"http://127.0.0.1:{args.port}/readyz")
        await asyncio.sleep(0.5 if args.processes > 1 else 0)  # every process listening
        if use_wrk:
            assert wrk is not None
            origin = f"http://127.0.0.1:{args.port}"
            load = await _load_wrk(wrk, origin, path, requests, args.duration, args.concurrency)
        else:
            load = await _load_python(url, requests, args.duration, args.concurrency)
    finally:
        for ingress in ingresses:
            _stop(ingress)
    topology = Topology(namespace)
    queued = await _queue_depth(amqp_url, topology.ledger_queue)
    print(
        f"ingress ({args.processes} process(es), load from {load.client}): {load.accepted} "
        f"accepted in {load.elapsed:.1f}s = {load.accepted / load.elapsed:,.0f}/s at "
        f"{args.concurrency} connections; errors {load.errors}; ack latency p50 "
        f"{load.p50_ms:.1f} ms, p90 {load.p90_ms:.1f} ms, p99 {load.p99_ms:.1f} ms; "
        f"{queued} messages on the ledger queue "
        f"({load.accepted / max(queued, 1):.1f} callbacks per message)"
    )

    # Every accepted request carried a distinct callback (the load never repeats a request),
    # so the ledger is drained when it recorded that many; the queue's depth alone would say
    # so too early (messages the worker holds unacked are not counted there).
    conn = await asyncpg.connect(database_url)
    started = time.monotonic()
    worker = _spawn(["worker", "ledger"], env)
    try:
        recorded = 0
        while recorded < load.accepted and time.monotonic() - started < args.drain_timeout:
            await asyncio.sleep(0.1)
            recorded = await conn.fetchval("SELECT count(*) FROM callbacks")
        drained = time.monotonic() - started
    finally:
        _stop(worker)
        await conn.close()
    print(
        f"ledger: recorded {recorded} of {load.accepted} callbacks in {drained:.1f}s "
        f"(incl. start-up) = {recorded / drained:,.0f}/s"
    )
    check = await asyncio.to_thread(
        subprocess.run, [PAYHOOK, "ledger", "check"], env=env, capture_output=True, text=True
    )
    last = (check.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"ledger check: exit {check.returncode}: {last}")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (
            topology.ledger_queue,
            topology.ledger_dead_queue,
            topology.webhooks_queue,
            topology.webhooks_dead_queue,
            topology.orders_queue,
            *(topology.webhooks_retry_queue(d) for d in set(config.webhook_schedule[1:]) if d > 0),
        ):
            await channel.queue_delete(name)
        for exchange in (
            topology.callbacks_exchange,
            topology.events_exchange,
            topology.ledger_dead_exchange,
        ):
            await channel.exchange_delete(exchange)


if __name__ == "__main__":
    asyncio.run(main())
