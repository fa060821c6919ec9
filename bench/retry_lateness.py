"""Webhook retry lateness through the loss of a broker node (bounded; 127.0.0.1 only).

Against the local 3-node cluster (``scripts/services.sh cluster start``), this declares a
webhook delay queue and its target exactly as payhook does (``Topology.retry_queue_arguments``:
quorum, TTL, dead-letter back to ``<ns>.webhooks``, at-least-once dead-lettering,
reject-publish; ``<ns>.webhooks`` with ``webhooks_queue_arguments``), in a fresh namespace.
It publishes ``--count`` messages carrying their due time (publish time + ``--ttl``), takes
down the node ``--victim`` (c1), which leads one or both queues (``--placement``), consumes the
target queue through a surviving node, restarts the node ``--down-for`` seconds later, and
prints per-message lateness (min/median/max; how many arrived while the node was down), lost,
duplicated and still-waiting counts, and whether the node rejoined (3 running nodes, both
queues with 3 online members). Then it deletes the queues.

    scripts/services.sh cluster start
    .venv/bin/python bench/retry_lateness.py --count 1000 --spread 10 --kill-after 1
    .venv/bin/python bench/retry_lateness.py ... --confirm-timeout-ms 180000   # RabbitMQ's default
    .venv/bin/python bench/retry_lateness.py ... --fault freeze --freeze-s 30 --down-for 60

``--sweep-overdue S`` adds what payhook's overdue sweeper does (workers/webhooks/sweeper.py),
with the due times the bench knows standing in for ``webhook_deliveries.next_attempt_at``:
every ``--sweep-interval`` s a message not yet arrived and due more than S s ago is published
again (confirmed) straight to the target through a surviving node, on a fresh channel after a
refused publish, at most once per ``--sweep-recheck`` s. Lateness is then that of the first
copy; the copies that come later (the delay queue's, once it forwards) are counted as
"late copies", which payhook makes no-ops, and not as duplicates.

``--fault kill`` is SIGKILL (a crashed broker: the survivors see its connections reset at
once); ``freeze`` is SIGSTOP for ``--freeze-s`` seconds, then SIGKILL: a hung host or a cut
network, which the survivors only notice by timeouts. ``--placement same`` (default) puts the
target queue's leader on the victim too: what RabbitMQ 3.10's default ``client-local`` locator
does when one process declares the whole topology; ``split`` puts it on a surviving node;
``target`` takes down only the target's leader. Placement is forced with
``x-queue-leader-locator=client-local`` on the declaring connection, the only argument payhook
itself does not pass. ``--confirm-timeout-ms`` sets
``dead_letter_worker_publisher_confirm_timeout`` on every node for this run (``rabbitmqctl
eval``; the previous values are restored at the end); without it the cluster's own value
(deploy/rabbitmq/advanced.config) applies. The dead-letter worker a new leader starts reads it.

Exit status 0 when nothing was lost or left waiting, every message arrived within
``--tolerance`` seconds of its due time and the node rejoined; 1 otherwise. Waits at most
``--deadline`` seconds after the fault.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from contracts.topology import Topology

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"
NODES = ("c1", "c2", "c3")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SETTING = "dead_letter_worker_publisher_confirm_timeout"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def services(*args: str, check: bool = True) -> str:
    """``scripts/services.sh cluster ARGS``: its stdout (stderr goes to ours)."""
    result = subprocess.run(
        [str(SERVICES), "cluster", *args], capture_output=True, text=True, check=False
    )
    if result.stderr.strip():
        for line in result.stderr.strip().splitlines():
            _log(line)
    if check and result.returncode != 0:
        raise SystemExit(f"services.sh cluster {' '.join(args)} failed ({result.returncode})")
    return result.stdout


def queue_info(node: str, names: set[str]) -> dict[str, dict[str, Any]]:
    """Leader, members and online members of the named queues, as ``node`` sees them."""
    out = services(
        "ctl", node, "list_queues", "name", "leader", "members", "online", "messages",
        "--formatter", "json",
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out)
    return {row["name"]: row for row in rows if row["name"] in names}


def node_short(node_name: str) -> str:
    """``payhook-c2@localhost`` -> ``c2``."""
    return node_name.split("@", 1)[0].removeprefix("payhook-")


def node_pid(node: str) -> int:
    """The OS pid of our cluster node (from ``services.sh cluster status``)."""
    for line in services("status", check=False).splitlines():
        if line.startswith(f"{node}: running (ours, pid "):
            return int(line.split("pid ", 1)[1].split(",", 1)[0])
    raise SystemExit(f"{node} is not a running node of ours")


def get_timeouts(nodes: list[str]) -> dict[str, str]:
    return {
        n: services("ctl", n, "eval", f"application:get_env(rabbit, {SETTING}).").strip()
        for n in nodes
    }


def set_timeout(nodes: list[str], value_ms: int) -> None:
    for n in nodes:
        services("ctl", n, "eval", f"application:set_env(rabbit, {SETTING}, {value_ms}).")


@dataclass
class Received:
    arrivals: dict[int, list[float]] = field(default_factory=dict)  # i -> lateness of each copy
    first_at: dict[int, float] = field(default_factory=dict)  # i -> when its first copy came
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def add(self, i: int, lateness: float) -> None:
        self.arrivals.setdefault(i, []).append(lateness)
        self.first_at.setdefault(i, time.time())
        if len(self.arrivals) >= self.expected:
            self.done.set()


async def restart_later(node: str, at: float, received: Received) -> tuple[float, float]:
    """Restart ``node`` at ``at`` (or once everything has arrived): when it began, when done."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(received.done.wait(), timeout=max(0.0, at - time.time()))
    began = time.time()
    await asyncio.to_thread(services, "restart", node)
    return began, time.time()


async def consume(url: str, queue_name: str, received: Received, stop: asyncio.Event) -> None:
    """Consume the target queue, reconnecting if the node or the channel goes away."""
    while not stop.is_set():
        try:
            connection = await aio_pika.connect(url, timeout=10)
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            _log(f"consumer: connect failed ({exc!r}); retrying")
            await asyncio.sleep(1)
            continue
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=100)
            queue = await channel.get_queue(queue_name, ensure=False)

            async def on_message(message: AbstractIncomingMessage) -> None:
                now = time.time()
                body = json.loads(message.body)
                received.add(int(body["i"]), now - float(body["due"]))
                await message.ack()

            await queue.consume(on_message)
            closed = asyncio.ensure_future(connection.closed())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (closed, stopping):
                task.cancel()
            if not stop.is_set():
                _log("consumer: connection closed; reconnecting")
        except (OSError, aiormq.exceptions.AMQPError) as exc:
            _log(f"consumer: {exc!r}; reconnecting")
            await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()


@dataclass
class Sweep:
    """The stand-in for payhook's sweeper: due times in place of ``next_attempt_at``."""

    overdue_s: float
    interval_s: float
    recheck_s: float
    due: dict[int, float] = field(default_factory=dict)  # i -> due time (epoch s)
    swept_at: dict[int, float] = field(default_factory=dict)
    published: int = 0
    refused: int = 0


async def sweep(
    url: str, queue_name: str, plan: Sweep, received: Received, stop: asyncio.Event
) -> None:
    """Publish overdue, not yet arrived messages straight to the target (see the docstring)."""
    channel: Any = None
    connection: Any = None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=plan.interval_s)
        now = time.time()
        overdue = [
            i
            for i, due in plan.due.items()
            if i not in received.arrivals
            and due < now - plan.overdue_s
            and plan.swept_at.get(i, 0.0) < now - plan.recheck_s
        ]
        if not overdue or stop.is_set():
            continue
        try:
            if connection is None or connection.is_closed:
                connection = await aio_pika.connect(url, timeout=10)
                channel = None
            if channel is None or channel.is_closed:
                # Bounded: after a refused publish on a hung node's queue even this can hang.
                channel = await asyncio.wait_for(
                    connection.channel(publisher_confirms=True), timeout=5
                )
            _log(f"sweeper: publishing {len(overdue)} overdue")
            results = await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            json.dumps({"i": i, "due": plan.due[i]}).encode(),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue_name,
                        mandatory=True,
                        timeout=10,
                    )
                    for i in overdue
                ),
                return_exceptions=True,
            )
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            _log(f"sweeper: {exc!r}; again in {plan.interval_s:g} s on a new connection")
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), timeout=1)
            connection = None
            continue
        ok = [i for i, r in zip(overdue, results, strict=True) if not isinstance(r, BaseException)]
        for i in ok:
            plan.swept_at[i] = now
        plan.published += len(ok)
        if len(ok) < len(overdue):
            plan.refused += len(overdue) - len(ok)
            # Not waited on for long: closing a channel stuck on a hung node's queue hangs too.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), timeout=1)
            channel = None  # 3.10: a refused channel stays refused; the next sweep opens another
        _log(f"sweeper: re-published {len(ok)} overdue, {len(overdue) - len(ok)} refused")
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.close()


async def declare(url: str, name: str, arguments: dict[str, Any]) -> None:
    """Declare a queue through ``url``'s node with its leader there (client-local)."""
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel()
        await channel.declare_queue(
            name, durable=True, arguments={**arguments, "x-queue-leader-locator": "client-local"}
        )


async def delete(url: str, names: list[str]) -> None:
    async with await aio_pika.connect(url, timeout=10) as connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(name)


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"min {min(values):.1f} s, median {statistics.median(values):.1f} s, "
        f"max {max(values):.1f} s"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", default=os.environ.get("PAYHOOK_CLUSTER_AMQP_URLS", ""))
    parser.add_argument("--count", type=int, default=200, help="messages (default 200)")
    parser.add_argument("--ttl", type=float, default=15.0, help="delay queue TTL, s (15)")
    parser.add_argument("--spread", type=float, default=3.0, help="publish over this many s (3)")
    parser.add_argument("--kill-after", type=float, default=3.0, help="s after publishing (3)")
    parser.add_argument("--placement", choices=("same", "split", "target"), default="same")
    parser.add_argument("--victim", choices=NODES, default="c1", help="node to kill (c1)")
    parser.add_argument(
        "--fault",
        choices=("kill", "freeze"),
        default="kill",
        help="kill: SIGKILL; freeze: SIGSTOP (a hung host, no TCP reset), then SIGKILL",
    )
    parser.add_argument("--freeze-s", type=float, default=90.0, help="freeze this long (90)")
    parser.add_argument(
        "--down-for",
        type=float,
        default=60.0,
        help="restart the killed node this many s after the kill (60); it rejoins meanwhile",
    )
    parser.add_argument("--confirm-timeout-ms", type=int, help=f"set {SETTING} for this run")
    parser.add_argument("--tolerance", type=float, default=30.0, help="late by at most, s (30)")
    parser.add_argument("--deadline", type=float, default=600.0, help="wait at most, s (600)")
    parser.add_argument("--sweep-overdue", type=float, help="run the sweeper stand-in (s late)")
    parser.add_argument("--sweep-interval", type=float, default=5.0, help="sweep every s (5)")
    parser.add_argument("--sweep-recheck", type=float, default=60.0, help="again after s (60)")
    args = parser.parse_args()

    if not args.urls:
        args.urls = services("env").strip().split("=", 1)[1].strip("'\"")
    urls = dict(zip(NODES, args.urls.split(","), strict=True))
    for url in urls.values():
        if (urlsplit(url).hostname or "") not in _LOOPBACK:
            raise SystemExit(f"refusing to benchmark against {url!r}: 127.0.0.1 only")
    victim = args.victim
    survivors = [n for n in NODES if n != victim]
    delay_node = survivors[0] if args.placement == "target" else victim
    target_node = victim if args.placement in ("same", "target") else survivors[0]
    client_node = survivors[-1]  # publishes and consumes; never the victim

    status = services("status", check=False)
    if status.count("running (ours") != len(NODES):
        raise SystemExit(f"the cluster must be 3 running nodes of ours:\n{status}")

    previous = get_timeouts(list(NODES))
    if args.confirm_timeout_ms is not None:
        set_timeout(list(NODES), args.confirm_timeout_ms)
    _log(f"{SETTING}: " + ", ".join(f"{n} {v}" for n, v in get_timeouts(list(NODES)).items()))

    topology = Topology(namespace=f"bench{secrets.token_hex(4)}")
    target = topology.webhooks_queue
    delay = topology.webhooks_retry_queue(args.ttl)
    names = [delay, target]
    await declare(urls[target_node], target, topology.webhooks_queue_arguments())
    await declare(urls[delay_node], delay, topology.retry_queue_arguments(args.ttl))
    info = queue_info(client_node, set(names))
    leaders = {name: node_short(info[name]["leader"]) for name in names}
    _log(f"leaders: {delay} on {leaders[delay]}, {target} on {leaders[target]}")
    if (leaders[delay], leaders[target]) != (delay_node, target_node):
        raise SystemExit(f"leaders {leaders}: not where --placement {args.placement} wants them")

    received = Received(expected=args.count)
    stop = asyncio.Event()
    consumer = asyncio.create_task(consume(urls[client_node], target, received, stop))
    plan = None
    sweeper = None
    if args.sweep_overdue is not None:
        plan = Sweep(args.sweep_overdue, args.sweep_interval, args.sweep_recheck)
        sweeper = asyncio.create_task(sweep(urls[client_node], target, plan, received, stop))
    rc = 1
    try:
        async with await aio_pika.connect(urls[client_node], timeout=10) as connection:
            channel = await connection.channel(publisher_confirms=True)
            started = time.time()
            for i in range(args.count):
                sent = time.time()
                body = json.dumps({"i": i, "due": sent + args.ttl}).encode()
                if plan is not None:
                    plan.due[i] = sent + args.ttl
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=delay,
                    mandatory=True,
                    timeout=30,
                )
                pause = started + args.spread * (i + 1) / args.count - time.time()
                if pause > 0:
                    await asyncio.sleep(pause)
        published = time.time()
        _log(
            f"published {args.count} messages (confirmed) in {published - started:.1f} s "
            f"to {delay} via {client_node}; due {args.ttl:g} s after each publish"
        )
        await asyncio.sleep(max(0.0, published + args.kill_after - time.time()))
        kill_at = time.time()
        first_due = started + args.ttl
        when = (
            f"{kill_at - started:.1f} s after the first publish, first message due "
            f"{first_due - kill_at:+.1f} s from then; consuming via {client_node}"
        )
        if args.fault == "freeze":
            pid = node_pid(victim)
            os.kill(pid, signal.SIGSTOP)
            _log(f"froze {victim} (SIGSTOP, pid {pid}) {when}")
            await asyncio.sleep(args.freeze_s)
            services("kill", victim)  # SIGKILL works on a stopped process
            _log(f"killed {victim} after {args.freeze_s:g} s frozen")
        else:
            services("kill", victim)
            _log(f"killed {victim} (SIGKILL) {when}")
        down_at = time.time()
        back = asyncio.create_task(restart_later(victim, down_at + args.down_for, received))

        deadline = down_at + args.deadline
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(received.done.wait(), timeout=deadline - time.time())
        restart_at, back_at = await back  # at once if it still waits: everything has arrived
        await asyncio.sleep(2)  # a moment more for duplicates of the last messages
        stop.set()
        await consumer
        if sweeper is not None:
            await sweeper

        info = queue_info(client_node, set(names))
        running = services("ctl", client_node, "cluster_status", "--formatter", "json")
        running_nodes = json.loads(running)["running_nodes"]
        members = {n: len(info[n]["online"]) if n in info else 0 for n in names}
        missing = args.count - len(received.arrivals)
        # Only asked when some are missing: the broker's count lags (it still includes messages
        # forwarded in the last few seconds), so it can only bound the loss from below.
        waiting = min(missing, int(info[delay]["messages"])) if missing and delay in info else 0

        late = [min(copies) for copies in received.arrivals.values()]
        copies = sum(len(c) for c in received.arrivals.values())
        duplicates = copies - len(received.arrivals)
        if plan is not None:
            # The delay queue's copy of a swept message is expected (payhook makes it a no-op).
            late_copies = sum(max(0, len(received.arrivals.get(i, [])) - 1) for i in plan.swept_at)
            duplicates -= late_copies
            _log(
                f"sweeper: re-published {plan.published} ({plan.refused} refused, tried again); "
                f"late copies from the delay queue: {late_copies}"
            )
        lost = missing - waiting
        over = sum(1 for x in late if x > args.tolerance)
        while_down = sum(1 for t in received.first_at.values() if t < restart_at)
        _log(
            f"received {len(received.arrivals)}/{args.count} ({while_down} while {victim} was "
            f"down, {len(received.arrivals) - while_down} once it was restarted "
            f"{restart_at - down_at:.0f} s after the kill, back {back_at - restart_at:.0f} s "
            f"later): lateness {summary(late)}; "
            f"lost {lost}, duplicates {duplicates}, still waiting in {delay}: {waiting}, "
            f"later than {args.tolerance:g} s: {over}"
        )
        _log(
            f"{victim} rejoined: running nodes {len(running_nodes)}; "
            + ", ".join(f"{n} {m} online members" for n, m in members.items())
        )
        rejoined = len(running_nodes) == len(NODES) and all(
            m == len(NODES) for m in members.values()
        )
        if not rejoined:
            _log(f"{victim} did NOT rejoin fully")
        rc = 0 if lost == 0 and waiting == 0 and over == 0 and rejoined else 1
        _log("target met" if rc == 0 else "target MISSED")
    finally:
        stop.set()
        if sweeper is not None and not sweeper.done():
            sweeper.cancel()
        if not consumer.done():
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        if f"{victim}: running (ours" not in services("status", check=False):
            services("restart", victim, check=False)
        await delete(urls[client_node], names)
        if args.confirm_timeout_ms is not None:
            for node, value in previous.items():
                if value.startswith("{ok,"):
                    set_timeout([node], int(value.removeprefix("{ok,").rstrip("}")))
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
