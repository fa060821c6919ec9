"""Ingress vs. the broker's ceiling, metrics on/off, and where a request's time goes (bounded).

Each round measures, on the same broker and in this order:

1. **the reference**: RabbitMQ's confirmed-publish ceiling here and now: aio-pika on uvloop,
   persistent messages the size of one payhook callback message (a real encoded callback) to
   a quorum queue with ``--in-flight`` (256) confirms outstanding, for ``--ceiling-seconds``;
2. **payhook**: ``--processes`` (2) ``payhook ingress`` on one port (``PAYHOOK_LISTEN_REUSE_PORT``)
   with no consumer (the broker just stores), loaded by ``wrk`` (``apt-get install wrk``) at
   ``--concurrency`` (64) connections with pre-signed Paysera callbacks for ``--duration`` s,
   once per ``--metrics`` setting (``on``, ``off`` or ``both``: ``PAYHOOK_METRICS``).

and prints accepted callbacks/s, p99 and payhook/ceiling. Rounds repeat ``--rounds`` times
(A B A B …), then min/median/max of each figure and of the ratios follow. The ceiling counts
messages, payhook callbacks: callbacks that arrive together share one confirmed message, so
the ratio can exceed 1; it is the figure to compare across machines and days.

``--profile DIR`` adds one more payhook run (metrics as the first ``--metrics`` setting) with
``py-spy record --format raw`` (``pip install py-spy``) attached to every ingress process, and
prints where the CPU microseconds per accepted callback go (request parsing, verification,
normalization, encoding, logging, metrics, publish/confirm, response, event loop).

    PAYHOOK_AMQP_URL=… .venv/bin/python bench/ingress_ceiling.py --rounds 3 --metrics both

Talks to 127.0.0.1 only, uses its own namespace per run (deleted afterwards) and needs no
database. Each run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
from ingress_load import PAYHOOK, REPO, _load_wrk, _percentile, _queue_depth, _wait_http

from contracts.callbacks import encode_callback
from contracts.config import Config
from contracts.topology import Topology
from ingress.providers import PROVIDERS
from ingress.providers.base import SimulatedPayment, SimulatedRequest
from ingress.simulator import to_raw_request
from payhook.config_files import load_config

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_TICK = os.sysconf("SC_CLK_TCK")


def loopback(url: str) -> str:
    """``url`` itself, if every host in it (comma-separated nodes too) is this machine."""
    for part in url.split(","):
        host = urlsplit(part.strip()).hostname or ""
        if host not in _LOOPBACK:
            raise SystemExit(f"refusing to benchmark against {host!r}: 127.0.0.1 only")
    return url


def cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class Sched:
    """What the scheduler says of a process, summed over its threads (``/proc/<pid>/task``):
    seconds on a CPU, seconds runnable but waiting for one, and context switches (voluntary:
    it blocked, e.g. waited for I/O; involuntary: it was preempted while it still had work)."""

    run_s: float = 0.0
    wait_s: float = 0.0
    voluntary: int = 0
    involuntary: int = 0

    def __add__(self, other: Sched) -> Sched:
        return Sched(
            self.run_s + other.run_s,
            self.wait_s + other.wait_s,
            self.voluntary + other.voluntary,
            self.involuntary + other.involuntary,
        )

    def __sub__(self, other: Sched) -> Sched:
        return Sched(
            self.run_s - other.run_s,
            self.wait_s - other.wait_s,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
        )


def sched_of(pid: int) -> Sched:
    """``Sched`` of ``pid`` now (all zero once it is gone)."""
    total = Sched()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return total
    for task in tasks:
        try:
            run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
            status = (task / "status").read_text().splitlines()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        switches = {
            key: int(value)
            for key, _, value in (line.partition(":\t") for line in status)
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
        }
        total += Sched(
            int(run_ns) / 1e9,
            int(wait_ns) / 1e9,
            switches.get("voluntary_ctxt_switches", 0),
            switches.get("nonvoluntary_ctxt_switches", 0),
        )
    return total


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine by state since boot (``/proc/stat``): user (incl.
    nice), system (incl. interrupts), idle (incl. I/O wait) and steal (taken by the host)."""
    fields = [int(v) / _TICK for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    return {
        "user": user + nice,
        "system": system + irq + softirq,
        "idle": idle + iowait,
        "steal": steal,
    }


def rss_of(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``min / median / max`` of ``values``."""
    if not values:
        return "n/a"
    parts = (min(values), statistics.median(values), max(values))
    return " / ".join(fmt.format(v) for v in parts)


# -- the reference: RabbitMQ's confirmed-publish ceiling ------------------------------------


@dataclass
class Ceiling:
    messages: int
    elapsed: float
    size: int
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed


def callback_message_size(config: Config) -> int:
    """Bytes of one encoded callback as the ingress publishes it (a verified Paysera one)."""
    account = config.account("paysera", "main")
    assert account is not None
    module = PROVIDERS["paysera"]
    payment = SimulatedPayment("ORD-1", "12.50", "EUR", "succeeded", transaction_id="1234567")
    request = module.simulate(account, payment)
    raw = to_raw_request(module, request, path="/callbacks/paysera/main", remote="127.0.0.1")
    callback = module.verify(raw, account, "2026-01-02T03:04:05.000000Z").callback
    return len(encode_callback(callback))


async def broker_ceiling(amqp_url: str, seconds: float, in_flight: int, size: int) -> Ceiling:
    """Persistent, confirmed publishes to a fresh quorum queue, ``in_flight`` outstanding."""
    name = f"bench{secrets.token_hex(4)}.ceiling"
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        body = secrets.token_hex(size // 2 + 1)[:size].encode()
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def publisher() -> None:
            while time.perf_counter() < deadline:
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                started = time.perf_counter()
                await channel.default_exchange.publish(message, routing_key=name, mandatory=True)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        await channel.queue_delete(name)
    finally:
        await connection.close()
    latencies.sort()
    return Ceiling(len(latencies), elapsed, size, _percentile(latencies, 0.99) * 1000)


# -- payhook's ingress ----------------------------------------------------------------------


@dataclass
class IngressRun:
    metrics: bool
    accepted: int
    errors: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    messages: int  # on the ledger queue afterwards
    cpu_s: float  # ingress processes, whole run
    profile: dict[str, float] | None = None  # category -> share of samples

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed


def signed_requests(config: Config, count: int, tag: str) -> list[SimulatedRequest]:
    account = config.account("paysera", "main")
    assert account is not None
    module = PROVIDERS["paysera"]
    return [
        module.simulate(
            account,
            SimulatedPayment(f"C-{i}", "12.50", "EUR", "succeeded", transaction_id=f"{tag}{i}"),
        )
        for i in range(count)
    ]


async def delete_namespace(amqp_url: str, topology: Topology, delays: Sequence[float]) -> None:
    """Delete every queue and exchange of ``topology`` (whatever exists of them)."""
    declarations = topology.declarations(delays)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in declarations.queues:
            await channel.queue_delete(queue.name)
        for exchange in declarations.exchanges:
            await channel.exchange_delete(exchange.name)


async def ingress_run(
    args: argparse.Namespace,
    amqp_url: str,
    requests: list[SimulatedRequest],
    *,
    metrics: bool,
    profile_dir: Path | None = None,
    code: Path | None = None,
) -> IngressRun:
    namespace = f"bench{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "PAYHOOK_AMQP_URL": amqp_url,
        "PAYHOOK_AMQP_NAMESPACE": namespace,
        "PAYHOOK_CONFIG_PATH": args.config,
        "PAYHOOK_LISTEN_PORT": str(args.port),
        "PAYHOOK_LOG_LEVEL": args.log_level,
        "PAYHOOK_METRICS": "true" if metrics else "false",
        "PAYHOOK_LISTEN_REUSE_PORT": "true" if args.processes > 1 else "false",
    }
    # Another checkout's code (--baseline): its packages first on the path, same interpreter.
    command = [PAYHOOK, "ingress"] if code is None else [sys.executable, "-m", "payhook", "ingress"]
    if code is not None:
        env["PYTHONPATH"] = str(code)
    procs = []
    for n in range(args.processes):
        env_n = {**env, "PAYHOOK_HEALTH_PORT": str(args.port + 1 + n)}
        procs.append(
            subprocess.Popen(  # noqa: ASYNC220
                command,
                cwd=code,
                env=env_n,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    spies: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(args.processes):
            await _wait_http(f"http://127.0.0.1:{args.port + 1 + n}/readyz")
        await asyncio.sleep(0.5)  # every process listening
        wrk = shutil.which("wrk")
        if wrk is None:
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        if profile_dir is not None:
            spies = [start_py_spy(p.pid, profile_dir, args.duration) for p in procs]
        cpu_before = sum(cpu_of(p.pid) for p in procs)
        origin = f"http://127.0.0.1:{args.port}"
        load = await _load_wrk(
            wrk, origin, "/callbacks/paysera/main", requests, args.duration, args.concurrency
        )
        cpu = sum(cpu_of(p.pid) for p in procs) - cpu_before
        for spy in spies:
            await asyncio.to_thread(spy.wait, args.duration + 30)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.terminate()
                spy.wait()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    topology = Topology(namespace)
    messages = await _queue_depth(amqp_url, topology.ledger_queue)
    await delete_namespace(amqp_url, topology, ())
    shares = summarise_profile(profile_dir) if profile_dir else None
    return IngressRun(
        metrics, load.accepted, load.errors, load.elapsed, load.p50_ms, load.p99_ms, messages, cpu,
        shares,
    )  # fmt: skip


# -- profile ----------------------------------------------------------------------------------


def _clear_profiles(directory: Path) -> None:
    for old in directory.glob("ingress-*.txt"):
        old.unlink()


def start_py_spy(
    pid: int, out: Path, duration: float, name: str = "ingress"
) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", "raw",
            "--duration", str(max(1, round(duration))), "-o", str(out / f"{name}-{pid}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


# A sample belongs to the first frame, from the leaf up, that is not generic (asyncio, uuid,
# base64 … are attributed to whoever called them); a stack of generic frames only is the loop.
_GENERIC = re.compile(
    r"asyncio/|uvloop|weakref|_weakrefset|dataclasses\.py|uuid\.py|base64\.py|urllib/|"
    r"contextvars|typing\.py|enum\.py|functools\.py|abc\.py|copy\.py|json/|re/__init__|"
    r"selectors\.py|threading\.py|ipaddress\.py|<frozen|<string>|<module>|payhook/cli\.py"
)
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("logging (structlog, JSON lines)", r"structlog/|payhook/logging\.py|logging/__init__"),
        ("metrics (prometheus-client)", r"prometheus_client/|ingress/metrics\.py"),
        ("encoding (callback -> message)", r"encode_callback|to_json \(|_message \(.*broker"),
        ("publish/confirm (aio-pika, aiormq, pamqp)", r"aio_pika/|aiormq/|pamqp/|ingress/broker"),
        (
            "verification (signature, decryption)",
            r"_paysera_crypto|cryptography/|hmac\.py|_open \(",
        ),
        ("normalization (fields, money, ids)", r"ingress/providers/|contracts/"),
        (
            "response (aiohttp out, socket send)",
            r"web_response\.py|http_writer\.py|finish_response",
        ),
        ("request (aiohttp parse, dispatch)", r"aiohttp/|multidict|yarl/|ingress/client_address"),
        ("handler itself (ids, time, binding)", r"ingress/handlers\.py"),
    )
)
_LOOP = "event loop (uvloop, asyncio, GC)"


def by_module(path: Path) -> dict[str, float]:
    """Share of the samples per module of the first non-generic frame from the leaf up."""
    counts: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        where = _LOOP
        for frame in reversed(stack.split(";")):
            if not _GENERIC.search(frame):
                match = re.search(r"\((?:.*site-packages/)?([^:]+)", frame)
                where = match.group(1) if match else frame
                if "/" in where and not where.startswith(("workers/", "runtime/", "contracts/")):
                    where = where.split("/")[0]
                break
        counts[where] += int(count)
    total = sum(counts.values()) or 1
    return {name: n / total for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def _category(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        if _GENERIC.search(frame):
            continue
        for name, pattern in _RULES:
            if pattern.search(frame):
                return name
        return "other"
    return _LOOP


def summarise_profile(directory: Path) -> dict[str, float]:
    """Share of the samples per category, over every ``ingress-*.txt`` (py-spy ``raw``)."""
    counts: dict[str, int] = defaultdict(int)
    for path in sorted(directory.glob("ingress-*.txt")):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                counts[_category(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {name: n / total for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}


# -- main -------------------------------------------------------------------------------------


def _us(run: IngressRun) -> float:
    return run.cpu_s * 1e6 / max(run.accepted, 1)


def _print_ingress(label: str, run: IngressRun, ceiling: Ceiling) -> None:
    per = run.accepted / max(run.messages, 1)
    print(
        f"  {label}: {run.rate:,.0f} callbacks/s accepted ({run.accepted} in {run.elapsed:.1f} s,"
        f" errors {run.errors}), p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms,"
        f" {per:.1f} callbacks/message, ingress CPU {run.cpu_s / run.elapsed:.2f} cores"
        f" ({run.cpu_s * 1e6 / max(run.accepted, 1):.0f} us/callback);"
        f" payhook/ceiling {run.rate / ceiling.rate:.2f}",
        flush=True,
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deploy" / "payhook.toml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metrics", choices=("on", "off", "both"), default="on")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per payhook run")
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=256, help="confirms outstanding")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2, help="ingress processes, one port")
    parser.add_argument("--port", type=int, default=18180)
    parser.add_argument("--max-requests", type=int, default=150_000, help="signed, pre-built")
    parser.add_argument("--log-level", default="info", help="PAYHOOK_LOG_LEVEL (to /dev/null)")
    parser.add_argument("--profile", metavar="DIR", help="one more run under py-spy")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run another checkout's ingress each round (e.g. a git worktree of the"
        " previous commit), alternating with this one: before/after in the same run",
    )
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10 or not 1 <= args.duration <= 60:
        raise SystemExit("--rounds 1..10, --duration 1..60 s: keep runs short")

    amqp_url = loopback(os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/"))
    config = load_config(args.config)
    size = callback_message_size(config)
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.metrics]
    print(f"building {args.max_requests} signed paysera callbacks …", flush=True)
    requests = signed_requests(config, args.max_requests, secrets.token_hex(3))
    print(
        f"ingress ceiling: {args.rounds} round(s) of [broker ceiling {args.ceiling_seconds:g} s,"
        f" payhook {args.duration:g} s x metrics {'/'.join(map(str, settings))}];"
        f" {args.processes} ingress process(es), {args.concurrency} connections (wrk),"
        f" log level {args.log_level}; {os.cpu_count()} cores shared with the broker and wrk",
        flush=True,
    )
    baseline = Path(args.baseline) if args.baseline else None
    if baseline is not None and not baseline.is_absolute():
        raise SystemExit("--baseline: give the checkout's absolute path")
    # (label, metrics, code): this checkout per metrics setting, or this vs. the baseline.
    variants: list[tuple[str, bool, Path | None]] = (
        [("this checkout", settings[0], None), ("baseline", settings[0], baseline)]
        if baseline is not None
        else [(f"metrics {'on ' if m else 'off'}", m, None) for m in settings]
    )
    ceilings: list[Ceiling] = []
    runs: dict[str, list[IngressRun]] = {label: [] for label, _, _ in variants}
    for n in range(args.rounds):
        ceiling = await broker_ceiling(amqp_url, args.ceiling_seconds, args.in_flight, size)
        ceilings.append(ceiling)
        print(
            f"round {n + 1}: broker ceiling {ceiling.rate:,.0f} msg/s ({size} B persistent,"
            f" quorum, {args.in_flight} in flight), confirm p99 {ceiling.p99_ms:.1f} ms",
            flush=True,
        )
        order = variants if n % 2 == 0 else variants[::-1]  # A B, B A: neither always first
        for label, metrics, code in order:
            run = await ingress_run(args, amqp_url, requests, metrics=metrics, code=code)
            runs[label].append(run)
            _print_ingress(label, run, ceiling)

    print(f"summary over {args.rounds} round(s), min / median / max:")
    print(f"  broker ceiling: {spread([c.rate for c in ceilings])} msg/s")
    for label, series in runs.items():
        ratios = [r.rate / c.rate for r, c in zip(series, ceilings, strict=True)]
        print(
            f"  payhook, {label}: {spread([r.rate for r in series])}"
            f" callbacks/s; p99 {spread([r.p99_ms for r in series], '{:.1f}')} ms;"
            f" payhook/ceiling {spread(ratios, '{:.2f}')};"
            f" ingress CPU {spread([r.cpu_s * 1e6 / max(r.accepted, 1) for r in series])}"
            " us/callback"
        )
    if baseline is None and len(settings) == 2:
        on, off = runs["metrics on "], runs["metrics off"]
        cost = [1 - a.rate / b.rate for a, b in zip(on, off, strict=True)]
        print(
            f"  metrics cost in throughput (1 - on/off, per round):"
            f" {spread([c * 100 for c in cost], '{:.1f}')} %"
            f" (rounds: {', '.join(f'{c * 100:+.1f}' for c in cost)})"
        )
        # CPU per accepted callback varies far less with the machine's other load than
        # throughput does, so it is the better measure of what metrics cost.
        cpu = [1 - _us(b) / _us(a) for a, b in zip(on, off, strict=True)]
        median_on, median_off = statistics.median(map(_us, on)), statistics.median(map(_us, off))
        print(
            f"  metrics cost in ingress CPU per callback (1 - off/on, per round):"
            f" {spread([c * 100 for c in cpu], '{:.1f}')} %"
            f" (rounds: {', '.join(f'{c * 100:+.1f}' for c in cpu)}); medians"
            f" {median_on:.0f} vs {median_off:.0f} us = {(1 - median_off / median_on) * 100:.1f}"
            " % (target < 5 %)"
        )

    if args.profile:
        out = Path(args.profile)
        _clear_profiles(out)
        ceiling = ceilings[-1]
        run = await ingress_run(args, amqp_url, requests, metrics=settings[0], profile_dir=out)
        _print_ingress("profiled run (py-spy 250 Hz, nonblocking)", run, ceiling)
        us = run.cpu_s * 1e6 / max(run.accepted, 1)
        print(f"  where {us:.0f} us of ingress CPU per accepted callback go (raw stacks in {out}):")
        for name, share in (run.profile or {}).items():
            print(f"    {name:<44} {share * 100:5.1f} %  {share * us:6.1f} us")
    return 0


def _run() -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


if __name__ == "__main__":
    sys.exit(_run())
