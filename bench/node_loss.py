"""Node-loss benchmark: payhook under load while the broker node leading its queues dies.

On the local 3-node cluster (``scripts/services.sh cluster``, started here if none answers,
and then stopped again): every role as its own ``payhook`` process (two ingresses on one
port, ledger worker, relay, webhook worker, admin), each given all three nodes; the node most
roles are attached to is made the leader of the ledger, webhooks and delay queues (a Ra
leadership transfer) and killed with SIGKILL ``--kill-at`` seconds into an open-loop load of
``--rate`` signed callbacks/s for ``--seconds``; it is restarted ``--down-for`` seconds later
and must rejoin while the load goes on. The merchant answers 500 to the first attempt of
``--fail-first`` of the webhooks; the retry schedule is ``--schedule`` (default now, +10 s,
+20 s), so retries wait in the delay queues through the loss.

Prints which role was on which node and which queues the node led, acked/sent, the longest
time without any ack and the time from the kill to the first ack, the ledger (``payhook ledger
check``, payments vs. acknowledged transactions), webhooks received vs. expected and
duplicates, each retried webhook's lateness (arrival - (first attempt + scheduled delay)),
the rejoin time, the roles' exits and their warning log lines. Exit 1 when a target is missed
(no ack for > 5 s, a retry > 30 s late, a role exited, a callback lost or doubled, no rejoin).

    eval "$(scripts/services.sh env)"       # Postgres: PAYHOOK_DATABASE_URL
    .venv/bin/python bench/node_loss.py --rate 150 --seconds 60

Bounded: ``--deadline`` (default 10 min) for the whole run on top of the run's own bounds
(readiness 90 s, rejoin 120 s, drain 120 s). Its own database (``payhook_test_<hex>``,
dropped afterwards unless ``--keep``) and broker namespace (``payhook.nl<hex>``, deleted).
Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the run lives with the test it is shared with

from tests.chaos.cluster import Cluster  # noqa: E402
from tests.chaos.node_loss import NodeLossPlan, broker_names, run_node_loss  # noqa: E402
from tests.servers import (  # noqa: E402
    create_database,
    database_server_url,
    delete_broker_names,
    drop_database,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=150.0, help="callbacks/s, open loop")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the load lasts")
    p.add_argument("--kill-at", type=float, default=20.0, help="seconds into the load")
    p.add_argument("--down-for", type=float, default=10.0, help="kill -> restart, seconds")
    p.add_argument("--schedule", default="0,10,20", help="webhook retry schedule, seconds")
    p.add_argument("--fail-first", type=float, default=0.3, help="share of first attempts")
    p.add_argument("--deadline", type=float, default=600.0, help="the whole run, seconds")
    p.add_argument(
        "--overdue-s", type=float, help="the roles' PAYHOOK_WEBHOOK_OVERDUE_S (0: no sweeper)"
    )
    p.add_argument("--log-level", default="info", help="the roles' PAYHOOK_LOG_LEVEL")
    p.add_argument("--workdir", type=Path, help="config, secrets and role logs (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the database")
    return p


async def _main(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    plan = NodeLossPlan(
        rate=args.rate,
        load_s=args.seconds,
        kill_at_s=args.kill_at,
        down_s=args.down_for,
        webhook_schedule=tuple(float(s) for s in args.schedule.split(",")),
        first_failure_rate=args.fail_first,
        log_level=args.log_level,
        webhook_overdue_s=args.overdue_s,
    )
    cluster = Cluster()
    record = Path(tempfile.mkdtemp(prefix="payhook-nodeloss-")) / "started"
    await cluster.run("start", "--record", str(record))
    ours = record.read_text().split() if record.exists() else []
    try:
        if not await cluster.ours():
            print("bench/node_loss: the cluster is not this checkout's own", file=sys.stderr)
            return 2
        server_url = database_server_url()
        database_url = await create_database(server_url)
        namespace = f"payhook.nl{secrets.token_hex(4)}"
        workdir = args.workdir or record.parent
        say(f"namespace {namespace}; logs in {workdir / 'logs'}; load {os.getloadavg()}")
        try:
            from workers.db import migrate

            await migrate(database_url)
            async with asyncio.timeout(args.deadline):
                report = await run_node_loss(
                    workdir,
                    database_url=database_url,
                    cluster=cluster,
                    namespace=namespace,
                    plan=plan,
                    say=say,
                )
        finally:
            await delete_broker_names(cluster.urls["c1"], broker_names(namespace, plan))
            if not args.keep:
                await drop_database(server_url, database_url)
    finally:
        if ours:
            await cluster.run("stop", *sorted(set(ours)), check=False)
    print()
    print(
        f"node-loss benchmark, {time.monotonic() - started:.0f} s in all; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(report.render())
    return 1 if report.problems or report.missed_targets else 0


def main() -> int:
    # The standard loop, as in the chaos benchmark: reading a subprocess's output to its end
    # hung under uvloop when the command left a server running (services.sh).
    return asyncio.run(_main(_parser().parse_args()))


if __name__ == "__main__":
    sys.exit(main())
