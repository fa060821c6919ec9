"""Chaos benchmark: the chaos test's run (tests/chaos) at 100,000 callbacks, with figures.

Every role as its own ``payhook`` process (two ingresses on one port, two ledger workers,
relay, webhook worker, admin); each callback sent 4 times at once by resending "providers";
meanwhile each role is killed with SIGKILL in turn (and restarted), RabbitMQ and Postgres are
restarted. Prints throughput (callbacks/s acknowledged), ack latency p50/p99/max, recovery
after each fault (until acks resume, until /readyz is 200 again), duplicates delivered to
the merchant and to an event queue, and the chaos test's verdict (exit 1 on any problem).

    eval "$(scripts/services.sh env)"      # the servers must be this checkout's own:
    .venv/bin/python bench/chaos.py         # both are restarted during the run

Bounded: ``--deadline`` (default 30 min) for the whole run, on top of the harness's own
bounds (readiness, resending, draining). Uses its own database (``payhook_bench_chaos_<hex>``,
dropped afterwards unless ``--keep``) and broker namespace (deleted afterwards). Talks only to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the harness lives with the test it is shared with

from tests.chaos.harness import ChaosPlan, broker_names, run_chaos  # noqa: E402
from tests.chaos.system import (  # noqa: E402
    ServerControl,
    amqp_server_url,
    database_server_url,
)
from tests.servers import (  # noqa: E402
    AMQP_SUFFIXES,
    create_database,
    delete_broker_names,
    drop_database,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--callbacks", type=int, default=100_000)
    p.add_argument("--copies", type=int, default=4, help="concurrent resending copies of each")
    p.add_argument("--concurrency", type=int, default=128, help="requests in flight")
    p.add_argument("--open-callbacks", type=int, default=1024, help="callbacks still resending")
    p.add_argument(
        "--load-s",
        type=float,
        default=0.0,
        help="spread the callbacks over this long (0: flat out)",
    )
    p.add_argument("--drain-s", type=float, default=900.0, help="patience for the drain")
    p.add_argument("--deadline", type=float, default=1800.0, help="the whole run, seconds")
    p.add_argument("--log-level", default="warning", help="the roles' PAYHOOK_LOG_LEVEL")
    p.add_argument("--workdir", type=Path, help="config, secrets and role logs (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the database and the workdir")
    return p


async def _main(args: argparse.Namespace) -> int:
    amqp_url, server_url = amqp_server_url(), database_server_url()
    servers = ServerControl(amqp_url, server_url)
    for kind in ("rabbitmq", "postgres"):
        if not await servers.is_ours(kind):
            print(
                f"bench/chaos: the {kind} server is not this checkout's own "
                "(scripts/services.sh start): refusing to restart it",
                file=sys.stderr,
            )
            return 2
    plan = ChaosPlan(
        callbacks=args.callbacks,
        copies=args.copies,
        load_s=args.load_s,
        concurrency=args.concurrency,
        open_callbacks=args.open_callbacks,
        drain_within_s=args.drain_s,
        give_up_s=300.0,
        log_level=args.log_level,
    )
    namespace = f"bench{secrets.token_hex(4)}"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="payhook-chaos-"))
    database_url = await create_database(server_url)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {text}", flush=True)

    try:
        from workers.db import migrate

        await migrate(database_url)
        say(
            f"{plan.callbacks} callbacks x {plan.copies} copies; faults: {', '.join(plan.faults)}; "
            f"namespace {namespace}; logs in {workdir / 'logs'}"
        )
        async with asyncio.timeout(args.deadline):
            report = await run_chaos(
                workdir,
                database_url=database_url,
                amqp_url=amqp_url,
                namespace=namespace,
                servers=servers,
                plan=plan,
                say=say,
            )
    finally:
        names = [namespace + suffix for suffix in AMQP_SUFFIXES]
        await delete_broker_names(amqp_url, names + broker_names(namespace, plan))
        if not args.keep:
            await drop_database(server_url, database_url)
    print()
    print(f"chaos benchmark, {time.monotonic() - started:.0f} s in all")
    print(report.render())
    return 1 if report.problems else 0


def main() -> int:
    # The standard loop, as in the test: under uvloop, reading a subprocess's output hung
    # (services.sh restart-rabbitmq; descriptors inherited by the broker it started) and so
    # did the end of the event tap's read. The roles run on uvloop regardless (payhook.cli).
    return asyncio.run(_main(_parser().parse_args()))


if __name__ == "__main__":
    sys.exit(main())
