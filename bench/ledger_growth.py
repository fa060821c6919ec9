"""Ledger growth benchmark: per-callback cost on an empty ledger vs. one with millions of payments.

Fills ``payhook_bench_growth`` by SQL of the ledger's own shape (``bench/growth_fill.py``) up
to each of ``--steps`` payments and, at each step, measures in pairs against a fresh empty
database, alternating which goes first:

- the ledger drain (``bench/ledger_drain.py``'s machinery: ``--count`` callbacks pre-loaded,
  ``--per-message`` to a message, one ``payhook worker ledger`` timed): callbacks/s, the
  worker's CPU and its Postgres backends' CPU per callback, and (with ``pg_stat_statements``
  preloaded) time and shared-buffer misses per callback of the hottest statements;
- with ``--e2e-rate``, ``bench/e2e.py``'s split layout at that fixed rate, on its own empty
  database and on the filled one (``--database``): CPU per acked callback of the ledger worker,
  relay, webhook worker and their Postgres backends.

It prints fill time, table and index sizes at each step, and a table of the ratios filled /
empty (target: within 1.2). The filled database is kept (the next run resumes the fill from
where it stands; a step below that is measured at the current size instead) unless ``--drop``.

Checkpoints. Per drain it also prints the WAL the ledger's statements wrote per callback
(``pg_stat_statements``: bytes and full-page images), how long before the drain the last
checkpoint was and how many checkpoints ran during it: the first change to a page after a
checkpoint logs the whole page, so on a big ledger a drain right after a checkpoint costs more
than one later in the interval. ``DROP DATABASE`` forces a checkpoint (Postgres 15), so each
pair gets an empty database of its own (``…_empty_<pair>``), all dropped at the end, and the
checkpoints a run sees are the server's own (``checkpoint_timeout``, ``max_wal_size``) unless
``--checkpoint`` issues them: ``start`` once before the first pair (the drains then walk through
one checkpoint interval, callbacks since it in the ``after`` column), ``pair`` before each pair,
``drain`` before each drain (every drain in the most expensive phase).

    PAYHOOK_DATABASE_URL=… PAYHOOK_AMQP_URL=… .venv/bin/python bench/ledger_growth.py \\
        --steps 1000000,5000000 --repeat 3 --e2e-rate 250

Bounded: each drain gives up after ``--deadline`` s, each e2e run after its sending time and
``--drain-timeout``; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import e2e
from growth_fill import FILL_TABLE, fill_to, filled
from ingress_ceiling import loopback, spread
from ledger_drain import Drain, cleanup_broker, drain, preload, workload

from contracts.topology import Topology
from workers.db import migrate

EMPTY = "payhook_bench_growth_empty"

_SIZES = """
SELECT c.relname AS name, c.relkind::text AS kind, c.reltuples::bigint AS rows,
       pg_relation_size(c.oid) AS bytes, t.relname AS of,
       CASE WHEN c.relkind = 'r' THEN pg_total_relation_size(c.oid) END AS total
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = i.indrelid
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') AND c.relname <> $1
ORDER BY coalesce(t.relname, c.relname), c.relkind DESC, c.relname
"""

_WAL = """
SELECT coalesce(sum(wal_fpi), 0) AS fpi, coalesce(sum(wal_bytes), 0) AS bytes
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1
"""

_CHECKPOINTS = """
SELECT checkpoints_timed + checkpoints_req AS n,
       extract(epoch FROM now() - (pg_control_checkpoint()).checkpoint_time) AS age
FROM pg_stat_bgwriter
"""

_STATEMENTS = """
SELECT query, calls, total_exec_time, shared_blks_hit, shared_blks_read, shared_blks_dirtied
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = $1
  AND query !~* '^(BEGIN|COMMIT|SELECT CASE WHEN is_called|SELECT count|UPDATE events SET pub)'
ORDER BY total_exec_time DESC LIMIT 12
"""


@dataclass
class Sample:
    """One drain: rate and CPU per callback; statement costs per callback by query."""

    rate: float
    worker_us: float
    backend_us: float
    statements: dict[str, tuple[float, float]] = field(default_factory=dict)  # us, misses
    wal_fpi: float = float("nan")  # full-page images per callback (the database's statements)
    wal_kb: float = float("nan")  # WAL kB per callback (the database's statements)
    checkpoint_age: float = float("nan")  # s since the last checkpoint when the drain started
    checkpoints: int = 0  # checkpoints completed during the drain


def _url(server: str, name: str) -> str:
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


async def _statements_on(conn: asyncpg.Connection[Any]) -> bool:
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
    except asyncpg.PostgresError:
        return False
    return True


async def measure_drain(
    server: str, amqp_url: str, database: str, args: argparse.Namespace, stats: bool
) -> Sample | None:
    """Pre-load a fresh workload (its own transaction ids) and time one worker on it."""
    url = _url(server, database)
    topology = Topology(f"growth{secrets.token_hex(4)}")
    messages, unique = workload(args.count, prefix=f"G{secrets.token_hex(3)}-")
    try:
        await preload(amqp_url, topology, messages, args.per_message)
        admin = await asyncpg.connect(url)
        try:
            if stats:
                await admin.execute("SELECT pg_stat_statements_reset()")
            before = await admin.fetchrow(_CHECKPOINTS)
            result: Drain | None = await drain(
                url, amqp_url, topology, messages, unique, deadline=args.deadline
            )
            if result is None:
                return None
            # As the relay would have, so that a later e2e run on this database does not
            # publish the drain's events as webhooks of its own.
            await admin.execute("UPDATE events SET published_at = now() WHERE published_at IS NULL")
            sample = Sample(
                result.rate,
                result.cpu.get("ledger worker", 0.0) * 1e6 / len(messages),
                result.cpu["postgres backends"] * 1e6 / len(messages),
            )
            after = await admin.fetchrow(_CHECKPOINTS)
            assert before is not None
            assert after is not None
            sample.checkpoint_age = float(before["age"])
            sample.checkpoints = int(after["n"] - before["n"])
            if stats:
                wal = await admin.fetchrow(_WAL, database)
                assert wal is not None
                sample.wal_fpi = float(wal["fpi"]) / len(messages)
                sample.wal_kb = float(wal["bytes"]) / 1000 / len(messages)
                for row in await admin.fetch(_STATEMENTS, database):
                    text = " ".join(row["query"].split())[:90]
                    sample.statements[text] = (
                        row["total_exec_time"] * 1000 / len(messages),
                        row["shared_blks_read"] / len(messages),
                    )
            return sample
        finally:
            await admin.close()
    finally:
        await cleanup_broker(amqp_url, topology)


async def fresh_empty(server: str, name: str) -> None:
    """Create and migrate an empty database; no DROP here (it would force a checkpoint)."""
    admin = await asyncpg.connect(_url(server, "postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    await migrate(_url(server, name))


async def drop_empties(server: str) -> None:
    """Drop every ``EMPTY``… database (each DROP forces a checkpoint: between runs only)."""
    admin = await asyncpg.connect(_url(server, "postgres"))
    try:
        for name in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{EMPTY}%"
        ):
            await admin.execute(f"DROP DATABASE IF EXISTS {name['datname']} WITH (FORCE)")
    finally:
        await admin.close()


async def checkpoint(server: str) -> None:
    async with _connected(_url(server, "postgres")) as admin:
        await admin.execute("CHECKPOINT")


async def print_sizes(conn: asyncpg.Connection[Any]) -> None:
    payments = await filled(conn)
    total = await conn.fetchval("SELECT pg_database_size(current_database())")
    print(f"  sizes at {payments:,} filled payments (database {total / 2**30:.2f} GiB):")
    for row in await conn.fetch(_SIZES, FILL_TABLE):
        if row["kind"] == "r":
            print(
                f"    {row['name']:<28} {row['rows']:>12,} rows  heap {row['bytes'] / 2**20:>8,.0f}"
                f" MiB  with indexes and TOAST {row['total'] / 2**20:>8,.0f} MiB"
            )
        else:
            print(f"      index {row['name']:<38} {row['bytes'] / 2**20:>8,.0f} MiB")


def _median(samples: list[Sample], key: str) -> float:
    return statistics.median(float(getattr(s, key)) for s in samples)


def report_drains(size: int, empty: list[Sample], grown: list[Sample]) -> list[str]:
    """Print one step's drain figures; return its summary rows."""
    rows = []
    for key, label, fmt in (
        ("rate", "callbacks/s", "{:,.0f}"),
        ("worker_us", "worker CPU us/callback", "{:,.0f}"),
        ("backend_us", "Postgres backend CPU us/callback", "{:,.0f}"),
        ("wal_fpi", "WAL full-page images/callback", "{:.2f}"),
        ("wal_kb", "WAL kB/callback", "{:.1f}"),
    ):
        pairs = [
            getattr(g, key) / getattr(e, key)
            for g, e in zip(grown, empty, strict=False)
            if getattr(e, key)
        ]
        base = _median(empty, key)
        rows.append(
            f"  {size:>10,} | drain {label:<33}"
            f" | empty {spread([getattr(s, key) for s in empty], fmt)}"
            f" | filled {spread([getattr(s, key) for s in grown], fmt)}"
            + (
                f" | ratio of medians {_median(grown, key) / base:.2f}"
                f" (pairs {spread(pairs, '{:.2f}')})"
                if base
                else ""
            )
        )
    if grown and grown[-1].statements:
        print(f"  statements at {size:,}, last pair (us per callback, shared-buffer misses):")
        base = empty[-1].statements if empty else {}
        for text, (us, misses) in grown[-1].statements.items():
            e_us, e_misses = base.get(text, (float("nan"), float("nan")))
            print(
                f"    {us:7.1f} us {misses:6.2f} miss"
                f" (empty {e_us:6.1f} us {e_misses:5.2f})  {text}"
            )
    return rows


async def measure_e2e(
    server: str, amqp_url: str, database: str | None, args: argparse.Namespace, work: Path
) -> dict[str, float] | None:
    """One split-layout e2e run at the fixed rate; CPU us per acked callback by role."""
    argv = ["--layouts", "split", "--rates", str(args.e2e_rate), "--seconds",
            str(args.e2e_seconds), "--drain-timeout", "30", "--log-level", "warning"]  # fmt: skip
    if database:
        argv += ["--database", database]
    e2e_args = e2e.build_parser().parse_args(argv)
    result = await e2e.run_once(e2e_args, "split", args.e2e_rate, 1.0, server, amqp_url, work)
    if not result.acked:
        return None
    return {k: v * 1e6 / result.acked for k, v in result.cpu.items()}


async def e2e_pairs(
    server: str, amqp_url: str, grown: str, size: int, args: argparse.Namespace, work: Path
) -> list[str]:
    """``--e2e-repeat`` pairs of e2e runs, empty and filled, alternating; summary rows."""
    empty: list[dict[str, float]] = []
    filled_: list[dict[str, float]] = []
    for rep in range(args.e2e_repeat):
        for database in (None, grown) if rep % 2 == 0 else (grown, None):
            cpu = await measure_e2e(server, amqp_url, database, args, work)
            if cpu is not None:
                (empty if database is None else filled_).append(cpu)
    rows = []
    for role in _E2E_ROLES:
        e_ = [c.get(role, 0.0) for c in empty]
        g_ = [c.get(role, 0.0) for c in filled_]
        if not e_ or not g_ or not statistics.median(e_):
            continue
        rows.append(
            f"  {size:>10,} | e2e CPU us/callback {role:<19} | empty {spread(e_)}"
            f" | filled {spread(g_)} | ratio of medians"
            f" {statistics.median(g_) / statistics.median(e_):.2f}"
        )
    return rows


_E2E_ROLES = ("ledger", "postgres:ledger", "relay", "postgres:relay", "webhooks",
              "postgres:webhooks")  # fmt: skip


async def main(args: argparse.Namespace) -> int:
    server = loopback(
        os.environ.get("PAYHOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/payhook")
    )
    amqp_url = loopback(os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/"))
    steps = sorted(int(s) for s in args.steps.split(","))
    grown_name: str = args.database
    admin = await asyncpg.connect(_url(server, "postgres"))
    if args.fresh:
        await admin.execute(f"DROP DATABASE IF EXISTS {grown_name} WITH (FORCE)")
    if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", grown_name):
        await admin.execute(f"CREATE DATABASE {grown_name}")
    buffers = await admin.fetchval("SHOW shared_buffers")
    wal_settings = ", ".join(
        [
            f"{name} {await admin.fetchval(f'SHOW {name}')}"
            for name in ("checkpoint_timeout", "max_wal_size", "wal_compression")
        ]
    )
    await admin.close()
    await drop_empties(server)
    await migrate(_url(server, grown_name))
    conn = await asyncpg.connect(_url(server, grown_name))
    stats = await _statements_on(conn)
    print(
        f"ledger growth: steps {', '.join(f'{s:,}' for s in steps)} payments; drains of"
        f" {args.count:,} callbacks ({args.per_message} per message) x {args.repeat} pairs;"
        f" e2e {f'{args.e2e_rate:g}/s x {args.e2e_seconds:g} s' if args.e2e_rate else 'off'};"
        f" shared_buffers {buffers}, {wal_settings}; checkpoint {args.checkpoint};"
        f" pg_stat_statements {'on' if stats else 'off'};"
        f" {os.cpu_count()} cores",
        flush=True,
    )
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="payhook-growth-") as tmp:
        for step in steps:
            have = await filled(conn)
            if have < step:
                print(f"step {step:,}: filling from {have:,}", flush=True)
                seconds = await fill_to(conn, step, real_bodies=args.real_bodies)
                print(f"  fill: {step - have:,} payments in {seconds:.0f} s", flush=True)
            size = await filled(conn)
            await print_sizes(conn)
            empty: list[Sample] = []
            grown: list[Sample] = []
            since = 0  # callbacks drained into the filled database since the last checkpoint
            for rep in range(args.repeat):
                empty_name = f"{EMPTY}_{rep}"
                await fresh_empty(server, empty_name)
                if stats:
                    async with _connected(_url(server, empty_name)) as c:
                        await _statements_on(c)
                if args.checkpoint == "pair" or (args.checkpoint == "start" and rep == 0):
                    await checkpoint(server)
                    since = 0
                for target in (
                    (empty_name, grown_name) if rep % 2 == 0 else (grown_name, empty_name)
                ):
                    if args.checkpoint == "drain":
                        await checkpoint(server)
                        since = 0
                    sample = await measure_drain(server, amqp_url, target, args, stats)
                    if sample is None:
                        return 1
                    is_empty = target == empty_name
                    (empty if is_empty else grown).append(sample)
                    print(
                        f"  drain on {'empty' if is_empty else f'{size:,}'}:"
                        f" {sample.rate:,.0f} callbacks/s, worker {sample.worker_us:.0f} us,"
                        f" Postgres {sample.backend_us:.0f} us per callback;"
                        f" WAL {sample.wal_kb:.1f} kB, {sample.wal_fpi:.2f} full pages per"
                        f" callback; last checkpoint {sample.checkpoint_age:.0f} s before"
                        f"{'' if is_empty else f' (after {since:,} callbacks)'},"
                        f" {sample.checkpoints} during",
                        flush=True,
                    )
                    if not is_empty:
                        since = args.count if sample.checkpoints else since + args.count
            summary += report_drains(size, empty, grown)
            if args.e2e_rate:
                summary += await e2e_pairs(server, amqp_url, grown_name, size, args, Path(tmp))
        await drop_empties(server)
        admin = await asyncpg.connect(_url(server, "postgres"))
        await conn.close()
        if args.drop:
            await admin.execute(f"DROP DATABASE IF EXISTS {grown_name} WITH (FORCE)")
        await admin.close()
    print("summary (min / median / max; ratio filled / empty, target <= 1.20):")
    for row in summary:
        print(row)
    return 0


class _connected:
    """``async with _connected(url) as conn``: a connection closed on the way out."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> asyncpg.Connection[Any]:
        self.conn: asyncpg.Connection[Any] = await asyncpg.connect(self.url)
        return self.conn

    async def __aexit__(self, *_: object) -> None:
        await self.conn.close()


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1000000,5000000", help="payments, comma-separated")
    parser.add_argument("--database", default="payhook_bench_growth", help="the filled one")
    parser.add_argument("--count", type=int, default=30000, help="callbacks per drain")
    parser.add_argument("--per-message", type=int, default=10, help="callbacks per message")
    parser.add_argument("--repeat", type=int, default=3, help="pairs (empty, filled) per step")
    parser.add_argument("--e2e-rate", type=float, default=0, help="e2e callbacks/s; 0: no e2e")
    parser.add_argument("--e2e-seconds", type=float, default=15.0)
    parser.add_argument("--e2e-repeat", type=int, default=2, help="pairs of e2e runs per step")
    parser.add_argument("--deadline", type=float, default=300.0, help="per drain (s)")
    parser.add_argument("--real-bodies", action="store_true", help="see growth_fill.fill_to")
    parser.add_argument("--fresh", action="store_true", help="drop the filled database first")
    parser.add_argument("--drop", action="store_true", help="drop the filled database at the end")
    parser.add_argument(
        "--checkpoint",
        choices=("none", "start", "pair", "drain"),
        default="none",
        help="issue CHECKPOINT: never (the server's own only), once first, before each pair or"
        " each drain",
    )
    args = parser.parse_args()
    if not 1000 <= args.count <= 200_000 or max(int(s) for s in args.steps.split(",")) > 10**7:
        raise SystemExit("--count 1,000..200,000 and steps up to 10,000,000: keep it bounded")
    started = time.perf_counter()
    code = asyncio.run(main(args))
    print(f"ledger growth: done in {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(cli())
