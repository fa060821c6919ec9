"""The local 3-node RabbitMQ cluster (``scripts/services.sh cluster``) as the node-loss run
drives it: queue leaders and members, moving a leader, which process is attached to which
node, killing a node and bringing it back.

Everything goes through ``services.sh cluster`` (``ctl NODE …`` is ``rabbitmqctl`` against
that node), so the run acts only on this checkout's own nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tests.chaos.system import run_command
from tests.servers import SERVICES

__all__ = ["NODES", "Cluster", "node_of"]

NODES = ("c1", "c2", "c3")
_SS_PID = re.compile(r"pid=(\d+)")


def node_of(erlang_name: str) -> str:
    """``payhook-c2@localhost`` -> ``c2``."""
    return erlang_name.split("@", 1)[0].removeprefix("payhook-")


class Cluster:
    """``services.sh cluster …`` as coroutines; each raises if the script fails."""

    def __init__(self, patience: float = 120.0) -> None:
        self.patience = patience
        self.urls: dict[str, str] = {}  # node -> its AMQP URL, filled by ``load_urls``
        self.erlang: dict[str, str] = {}  # node -> its Erlang node name

    async def run(self, *args: str, check: bool = True) -> str:
        code, output = await run_command(
            [str(SERVICES), "cluster", *args], os.environ, self.patience
        )
        if check and code != 0:
            raise RuntimeError(f"services.sh cluster {' '.join(args)} exited {code}:\n{output}")
        return output

    async def load_urls(self) -> dict[str, str]:
        line = (await self.run("env")).strip().splitlines()[-1]
        urls = line.split("=", 1)[1].split(",")
        self.urls = dict(zip(NODES, urls, strict=True))
        return self.urls

    async def ours(self) -> bool:
        """All three nodes run and were started by this checkout's script."""
        return (await self.run("status", check=False)).count("running (ours") == len(NODES)

    async def queues(self, via: str) -> dict[str, dict[str, Any]]:
        """Every queue the cluster has, by name: leader, members, online (Erlang names)."""
        out = await self.run(
            "ctl", via, "list_queues", "name", "leader", "members", "online",
            "--formatter", "json",
        )  # fmt: skip
        rows: list[dict[str, Any]] = json.loads(_json_part(out))
        for row in rows:
            self.erlang.setdefault(node_of(str(row["leader"])), str(row["leader"]))
        return {str(row["name"]): row for row in rows}

    async def running_nodes(self, via: str) -> list[str]:
        out = await self.run("ctl", via, "cluster_status", "--formatter", "json")
        nodes: list[str] = json.loads(_json_part(out))["running_nodes"]
        return [node_of(n) for n in nodes]

    async def leaders(self, via: str, names: Sequence[str]) -> dict[str, str]:
        rows = await self.queues(via)
        return {name: node_of(str(rows[name]["leader"])) for name in names if name in rows}

    async def move_leader(self, queue: str, to: str, within: float = 30.0) -> None:
        """Make ``to`` lead ``queue`` (a Ra leadership transfer), waiting until it does.

        RabbitMQ 3.10 has no command for it, so this asks Ra directly on the current leader:
        the queue's Ra server id is ``{RaName, Node}``, the same name on every member.
        """
        deadline = time.monotonic() + within
        while True:
            rows = await self.queues(to)
            leader = str(rows[queue]["leader"])
            if node_of(leader) == to:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} still led by {leader} after {within:g} s")
            target = next(str(m) for m in rows[queue]["members"] if node_of(str(m)) == to)
            name = queue.replace("\\", "\\\\").replace('"', '\\"')
            await self.run(
                "ctl", node_of(leader), "eval",
                f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{name}">>)),'
                " {RaName, _} = Leader = amqqueue:get_pid(Q),"
                f" ra:transfer_leadership(Leader, {{RaName, '{target}'}}).",
            )  # fmt: skip
            await asyncio.sleep(0.5)

    async def all_members_online(self, via: str, names: Sequence[str]) -> bool:
        rows = await self.queues(via)
        return all(
            name in rows and len(rows[name]["online"]) == len(NODES) == len(rows[name]["members"])
            for name in names
        )

    async def kill(self, node: str) -> None:
        await self.run("kill", node)

    async def restart(self, node: str) -> None:
        """Start the node again with its data; the script waits until it has rejoined."""
        await self.run("restart", node)

    async def attached(self, pids: Mapping[str, int]) -> dict[str, list[str]]:
        """node -> the named processes (``pids``: name -> pid) with an AMQP connection to it.

        From the kernel's socket table (``ss -tnp``): the broker's ``list_connections`` names
        connections by role but not by process, and both ingresses have the same name.
        """
        by_pid = {pid: name for name, pid in pids.items()}
        ports = {urlsplit(url).port: node for node, url in self.urls.items()}
        code, out = await run_command(["ss", "-Htnp", "state", "established"], os.environ, 30)
        if code != 0:
            raise RuntimeError(f"ss exited {code}: {out}")
        found: dict[str, set[str]] = {node: set() for node in NODES}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            peer_port = fields[3].rsplit(":", 1)[-1]
            node = ports.get(int(peer_port)) if peer_port.isdigit() else None
            if node is None:
                continue
            for pid in _SS_PID.findall(line):
                if int(pid) in by_pid:
                    found[node].add(by_pid[int(pid)])
        return {node: sorted(names) for node, names in found.items()}


def _json_part(output: str) -> str:
    """rabbitmqctl's JSON, without a line the script may print before it."""
    start = min((i for i in (output.find("["), output.find("{")) if i >= 0), default=0)
    return output[start:]
