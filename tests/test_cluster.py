"""The local 3-node cluster (``scripts/services.sh cluster``) rides out the loss of a node.

Opt-in: it starts three more RabbitMQ nodes (about 15 s on 2 cores, see docs/operations.md,
"Broker cluster"), so it runs only with ``PAYHOOK_TEST_CLUSTER=1``. It starts the cluster
through the script, declares a quorum queue, kills its leader with SIGKILL, keeps publishing
and consuming through the surviving nodes, restarts the node and checks that it rejoined, then
stops what it started and checks that nothing of it is left running. It also checks that the
nodes run the shipped configuration (deploy/rabbitmq/): the dead-letter confirm timeout from
advanced.config, the operator policy from definitions.json and, with
``PAYHOOK_CLUSTER_PROMETHEUS=1``, per-queue depths from rabbitmq_prometheus.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "scripts" / "services.sh"
NODES = ("c1", "c2", "c3")

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("PAYHOOK_TEST_CLUSTER") != "1",
        reason="starts a 3-node RabbitMQ cluster (~15 s); set PAYHOOK_TEST_CLUSTER=1 to run it",
    ),
    pytest.mark.timeout(300),
]


def cluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SERVICES), "cluster", *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"services.sh cluster {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result


async def acluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cluster, *args, check=check)


async def queue_row(node: str, name: str) -> dict[str, Any]:
    out = await acluster(
        "ctl", node, "list_queues", "name", "leader", "members", "online", "policy",
        "--formatter", "json",
    )  # fmt: skip
    rows = [row for row in json.loads(out.stdout) if row["name"] == name]
    assert rows, f"{name} is not listed by {node}"
    row: dict[str, Any] = rows[0]
    return row


async def running_nodes(node: str) -> list[str]:
    out = await acluster("ctl", node, "cluster_status", "--formatter", "json")
    nodes: list[str] = json.loads(out.stdout)["running_nodes"]
    return nodes


def short(node_name: str) -> str:
    return node_name.split("@", 1)[0].removeprefix("payhook-")


async def publish(url: str, queue: str, bodies: list[bytes], *, retry_for: float = 0) -> int:
    """Persistent, mandatory publishes, each confirmed by the broker (a quorum majority).

    With ``retry_for``, a refused publish (nack) is retried on a new channel for that long;
    returns how many were refused. A new channel, not the same one: in RabbitMQ 3.10 a
    channel whose first publish to a quorum queue came while the queue's recorded leader was
    down keeps being refused until that node is back (its queue client keeps asking the dead
    node), while a new channel gets through once the survivors have elected a leader.
    """
    refused = 0
    deadline = time.monotonic() + retry_for
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel(publisher_confirms=True)
        for body in bodies:
            while True:
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue,
                        mandatory=True,
                        timeout=30,
                    )
                    break
                except aiormq.exceptions.DeliveryError:
                    refused += 1
                    if time.monotonic() > deadline:
                        raise
                    await channel.close()
                    await asyncio.sleep(0.2)
                    channel = await connection.channel(publisher_confirms=True)
    return refused


async def drain(url: str, queue: str, expected: set[bytes], patience: float = 60) -> set[bytes]:
    got: set[bytes] = set()
    deadline = time.monotonic() + patience
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        while not expected <= got and time.monotonic() < deadline:
            message = await q.get(fail=False, timeout=10)
            if message is None:
                await asyncio.sleep(0.2)
                continue
            got.add(message.body)
            await message.ack()
    return got


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http://127.0.0.1)
        body: bytes = response.read()
    return body.decode()


async def queue_depth_metric(urls: dict[str, str], queue: str) -> str:
    """The line of ``rabbitmq_detailed_queue_messages`` for ``queue``, polled from every node."""
    while True:
        for url in urls.values():
            port = urlsplit(url).port
            assert port is not None
            metrics = (
                f"http://127.0.0.1:{port + 2}/metrics/detailed?vhost=/&family=queue_coarse_metrics"
            )
            text = await asyncio.to_thread(fetch, metrics)
            for line in text.splitlines():
                if line.startswith("rabbitmq_detailed_queue_messages{") and f'"{queue}"' in line:
                    return line
        await asyncio.sleep(1)


def pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def cluster_processes() -> list[str]:
    """Command lines of running processes that belong to this checkout's cluster."""
    marker = str(REPO / ".local" / "cluster") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def recorded_pids(kinds: list[str]) -> list[int]:
    """The pids .local/cluster/started records for these kinds (c1, c2, c3, epmd)."""
    state = REPO / ".local" / "cluster" / "started"
    if not state.exists():
        return []
    rows = [line.split() for line in state.read_text().splitlines()]
    return [int(row[1]) for row in rows if row and row[0] in kinds]


def shipped_confirm_timeout() -> int:
    text = (REPO / "deploy" / "rabbitmq" / "advanced.config").read_text()
    found = re.search(r"\{dead_letter_worker_publisher_confirm_timeout,\s*(\d+)\}", text)
    assert found, "advanced.config sets no dead_letter_worker_publisher_confirm_timeout"
    return int(found.group(1))


async def test_cluster_survives_the_loss_of_a_queue_leader(tmp_path: Path) -> None:
    record = tmp_path / "started"
    started: list[str] = []
    try:
        t0 = time.monotonic()
        try:
            await acluster("start", "--record", str(record))
        finally:
            started = record.read_text().split() if record.exists() else []
        start_s = time.monotonic() - t0
        status = (await acluster("status", check=False)).stdout
        if status.count("running (ours") != len(NODES):
            pytest.skip(f"the cluster at the configured ports is not ours to kill:\n{status}")
        env = (await acluster("env")).stdout.strip()
        urls = dict(zip(NODES, env.split("=", 1)[1].split(","), strict=True))
        assert all(urlsplit(u).hostname == "127.0.0.1" for u in urls.values())
        assert len(await running_nodes("c1")) == 3

        # The shipped configuration is what the nodes run with.
        for node in NODES:
            setting = await acluster(
                "ctl", node, "eval",
                "application:get_env(rabbit, dead_letter_worker_publisher_confirm_timeout).",
            )  # fmt: skip
            assert setting.stdout.strip() == f"{{ok,{shipped_confirm_timeout()}}}", node

        # "payhook." so that the shipped operator policy applies to it.
        queue = f"payhook.t{secrets.token_hex(6)}.cluster"
        async with await aio_pika.connect(urls["c1"], timeout=10) as connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        row = await queue_row("c1", queue)
        assert len(row["members"]) == 3, row
        assert len(row["online"]) == 3, row
        assert row["policy"] == "payhook-queue-limits", row
        if os.environ.get("PAYHOOK_CLUSTER_PROMETHEUS") == "1":
            # The queue's depth, from the plugin of the node that leads it (each node reports
            # its own queues; the figures are refreshed every few seconds).
            await asyncio.wait_for(queue_depth_metric(urls, queue), timeout=30)

        leader = short(row["leader"])
        survivors = [n for n in NODES if n != leader]
        before = [f"before-{i}".encode() for i in range(50)]
        await publish(urls[survivors[0]], queue, before)

        await acluster("kill", leader)
        # Confirmed means a majority had it: nothing is lost with the leader, and the two
        # survivors elect a new one and go on taking publishes.
        after = [f"after-{i}".encode() for i in range(50)]
        t_kill = time.monotonic()
        refused = await publish(urls[survivors[0]], queue, after, retry_for=30)
        publish_s = time.monotonic() - t_kill
        row = await queue_row(survivors[1], queue)
        assert short(row["leader"]) in survivors, row
        got = await drain(urls[survivors[1]], queue, {*before, *after})
        assert got == {*before, *after}

        t1 = time.monotonic()
        await acluster("restart", leader)
        restart_s = time.monotonic() - t1
        assert len(await running_nodes(survivors[0])) == 3
        deadline = time.monotonic() + 30
        while True:
            row = await queue_row(survivors[0], queue)
            if len(row["online"]) == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert len(row["members"]) == 3, row
        assert len(row["online"]) == 3, row

        async with await aio_pika.connect(urls[leader], timeout=10) as connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)
    finally:
        kinds = sorted(set(started))
        pids = recorded_pids(kinds)
        t2 = time.monotonic()
        if kinds:
            await acluster("stop", *kinds, check=False)
        stop_s = time.monotonic() - t2
    print(
        f"cluster start {start_s:.1f} s; after the kill {refused} publishes refused, 50 confirmed"
        f" in {publish_s:.1f} s; restart {restart_s:.1f} s; stop {stop_s:.1f} s"
    )
    assert not [pid for pid in pids if pid_alive(pid)], "a process we started is still running"
    if set(started) >= {*NODES, "epmd"}:
        # We started the whole cluster: nothing of it may be left.
        assert cluster_processes() == []
        assert "running (ours" not in (await acluster("status", check=False)).stdout
