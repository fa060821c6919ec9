"""The chaos run: the whole system as separate processes, load, faults, then the verdict.

``run_chaos`` starts every role through the ``payhook`` command (two ingresses sharing the
port, two ledger workers, relay, webhook worker, admin), a merchant endpoint and an event tap;
sends the planned callbacks from resending "providers"; meanwhile kills each role with
SIGKILL in turn (restarting only that one) and restarts RabbitMQ and Postgres; waits for the
pipeline to drain; stops every role with SIGTERM; and returns a ``Report`` whose ``problems``
list every broken guarantee (``tests/chaos/verify.py``). The test asserts it is empty; the
benchmark (``bench/chaos.py``) prints it with the figures.

Paysepro signs nothing, so its money waits for the order's expectation. Its orders are
registered through the admin listener in three ways, a third each: before the run, at the
same moment as the callback's first send, and after the callback was acknowledged (the
held callback is then released). Each must end with the money credited exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos.load import BACKOFF_S, Load, Planned, plan_callbacks
from tests.chaos.merchant import ChaosMerchant
from tests.chaos.processes import RoleSpec, Supervisor
from tests.chaos.system import (
    MERCHANT,
    WEBHOOK_BUSY_DELAY_S,
    EventTap,
    ServerControl,
    free_port,
    role_environment,
    secrets_in,
    with_password,
    write_config,
)
from tests.chaos.verify import Report, verify, wait_drained

__all__ = [
    "FAULTS",
    "ROLES",
    "ChaosPlan",
    "FaultDriver",
    "FaultRecord",
    "Registrar",
    "Report",
    "broker_names",
    "run_chaos",
]

# name -> payhook arguments
ROLES: dict[str, tuple[str, ...]] = {
    "ingress-1": ("ingress",),
    "ingress-2": ("ingress",),
    "ledger-1": ("worker", "ledger"),
    "ledger-2": ("worker", "ledger"),
    "relay": ("relay",),
    "webhooks": ("worker", "webhooks"),
    "admin": ("admin",),
}
FAULTS: tuple[str, ...] = (
    "kill ingress-1",
    "kill ledger-1",
    "kill relay",
    "restart rabbitmq",
    "kill webhooks",
    "kill ingress-2",
    "restart postgres",
    "kill ledger-2",
    "kill admin",
)


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    callbacks: int = 2500
    copies: int = 4
    # The callbacks (but a reserve) are spread evenly over this long; 0: as fast as they go.
    load_s: float = 50.0
    # This share is held back and trickled out while faults remain, so load always flows
    # during every fault, however long the restarts take.
    reserve: float = 0.05
    trickle_s: float = 0.1
    concurrency: int = 64  # requests in flight
    open_callbacks: int = 512  # callbacks whose copies are still resending
    faults: tuple[str, ...] = FAULTS
    fault_gap_s: float = 2.0  # after one fault recovered, before the next
    ready_within_s: float = 90.0
    drain_within_s: float = 120.0
    give_up_s: float = 150.0  # a copy stops resending this long after its first send
    merchant_failure_rate: float = 0.2
    webhook_schedule: tuple[float, ...] = (0, 2, 4, 8, 16)
    shutdown_grace_s: float = 5.0
    log_level: str = "info"


@dataclass(slots=True)
class FaultRecord:
    name: str
    started: float
    done: float = 0.0  # the kill and restart, or the server restart, returned
    ready: float | None = None  # /readyz 200 again: the role's, or every role's for a server
    error: str | None = None


def broker_names(namespace: str, plan: ChaosPlan) -> list[str]:
    """Queues a run declares beyond the namespace's well-known ones (for the janitor)."""
    from contracts.topology import Topology

    topology = Topology(namespace)
    delays = {d for d in (*plan.webhook_schedule, WEBHOOK_BUSY_DELAY_S) if d > 0}
    return [EventTap.queue_name(namespace), *(topology.webhooks_retry_queue(d) for d in delays)]


class Registrar:
    """Registers Paysepro orders on the admin listener, as the merchant's checkout would:
    resending on 503 and connection errors until it gets 201/200."""

    def __init__(self, admin_url: str, token: str, give_up_s: float) -> None:
        self.url = f"{admin_url}/orders"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.give_up_s = give_up_s
        self.results: dict[str, str] = {}  # order id -> "created", "unchanged" …
        self.problems: list[str] = []
        self.released = 0  # held callbacks the registrations released
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Registrar:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15, connect=5))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._http is not None:
            await self._http.close()

    def spawn(self, planned: Planned) -> None:
        task = asyncio.create_task(self.register(planned))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def register(self, planned: Planned) -> None:
        assert self._http is not None
        order = {
            "merchant": MERCHANT,
            "provider": planned.provider,
            "account": planned.account,
            "order_id": planned.order_id,
            "amount": planned.minor,
            "currency": planned.currency,
            "test": False,
        }
        first = time.monotonic()
        attempt = 0
        while time.monotonic() - first < self.give_up_s:
            status, answer = None, {}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with self._http.post(self.url, json=order, headers=self.headers) as resp:
                    status = resp.status
                    answer = await resp.json(content_type=None)
            if status in (200, 201):
                self.results[planned.order_id] = str(answer.get("result"))
                self.released += int(answer.get("released") or 0)
                return
            if status is not None and status != 503:
                self.problems.append(f"POST /orders {planned.order_id}: {status} {answer}")
                return
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
        self.problems.append(f"POST /orders {planned.order_id}: gave up after {self.give_up_s} s")


class FaultDriver:
    """Runs ``plan.faults`` in order, each once the load reached its share of the callbacks."""

    def __init__(
        self, plan: ChaosPlan, supervisor: Supervisor, servers: ServerControl, load: Load
    ) -> None:
        self.plan = plan
        self.supervisor = supervisor
        self.servers = servers
        self.load = load
        self.records: list[FaultRecord] = []
        self.completed = 0  # faults recovered from (or failed)
        self.done = False
        self.say: Callable[[str], None] = lambda _: None

    async def run(self) -> None:
        bulk = self.plan.callbacks - reserve_of(self.plan)
        count = len(self.plan.faults)
        try:
            for k, name in enumerate(self.plan.faults):
                await self.load.reached(int(bulk * (k + 1) / (count + 1)))
                if k:
                    await asyncio.sleep(self.plan.fault_gap_s)
                record = FaultRecord(name, time.monotonic())
                self.records.append(record)
                self.say(f"fault {k + 1}/{count}: {name}")
                try:
                    await self._one(record)
                finally:
                    self.completed += 1
                self.say(
                    f"  recovered: ready after {record.ready - record.started:.1f} s"
                    if record.ready is not None
                    else "  not recovered"
                )
        finally:
            self.done = True

    async def _one(self, record: FaultRecord) -> None:
        verb, target = record.name.split(" ", 1)
        within = self.plan.ready_within_s
        sup = self.supervisor
        try:
            if verb == "kill":
                await sup.kill(target)
                await sup.start(target)
                record.done = time.monotonic()
                record.ready = await sup.wait_ready(target, within)
            elif target == "rabbitmq":
                await self.servers.restart_rabbitmq()
                record.done = time.monotonic()
                record.ready = await sup.wait_all_ready(within)
            elif target == "postgres":
                await self.servers.restart_postgres()
                record.done = time.monotonic()
                record.ready = await sup.wait_all_ready(within)
            else:
                raise ValueError(f"unknown fault {record.name!r}")
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            raise


def reserve_of(plan: ChaosPlan) -> int:
    return int(plan.callbacks * plan.reserve) if plan.faults else 0


def _pacing(plan: ChaosPlan, faults: FaultDriver) -> Callable[[int], float]:
    """How long the load waits before callback ``i``: keeps it from outrunning the faults.

    The bulk is cut into one slot per fault plus one; fault k starts when the load enters
    slot k + 1. Callbacks of a later slot, and the final reserve, trickle out while the
    fault before them is still running, so every fault happens while callbacks are being
    sent, however long its restart takes; otherwise they go at the planned pace.
    """
    bulk = plan.callbacks - reserve_of(plan)
    slots = len(plan.faults) + 1
    step = plan.load_s / bulk if plan.load_s > 0 else 0.0

    def pace(i: int) -> float:
        if i >= bulk:
            return 0.0 if faults.done else plan.trickle_s
        slot = i * slots // bulk
        if slot >= 2 and faults.completed < slot - 1:
            return plan.trickle_s
        return step

    return pace


async def _until_done(failed: asyncio.Event, *aws: Awaitable[None]) -> None:
    """Until every one of ``aws`` finished; raises as soon as one fails or ``failed`` is set
    (a role exited on its own), cancelling the rest."""
    work: asyncio.Future[list[None]] = asyncio.ensure_future(asyncio.gather(*aws))
    watch: asyncio.Future[bool] = asyncio.ensure_future(failed.wait())
    both: list[asyncio.Future[Any]] = [work, watch]
    try:
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise AssertionError("a role exited on its own")
        work.result()
    finally:
        for future in both:
            future.cancel()
        await asyncio.wait(both)


async def run_chaos(
    workdir: Path,
    *,
    database_url: str,
    amqp_url: str,
    namespace: str,
    servers: ServerControl,
    plan: ChaosPlan,
    say: Callable[[str], None] = lambda _: None,
) -> Report:
    """One whole chaos run (see the module docstring); never raises for a broken guarantee."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(3)
    merchant_secret = ChaosMerchant.new_secret()
    merchant = ChaosMerchant(merchant_secret, plan.merchant_failure_rate)
    # Postgres trusts local connections, so a password in the URL is accepted and ignored:
    # it is there to prove no log line ever shows it.
    role_db_url = with_password(database_url, "chaos-" + secrets.token_hex(8))
    tap = EventTap(amqp_url, namespace)
    problems: list[str] = []
    drain_s: float | None = None
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(merchant.serving())
        files = write_config(workdir, merchant.url, plan.webhook_schedule, merchant_secret)
        listen_port, admin_port = free_port(), free_port()
        env = role_environment(
            database_url=role_db_url,
            amqp_url=amqp_url,
            namespace=namespace,
            config_path=files.config_path,
            listen_port=listen_port,
            admin_port=admin_port,
            log_level=plan.log_level,
            shutdown_grace_s=plan.shutdown_grace_s,
        )
        specs = [RoleSpec(name, argv, free_port()) for name, argv in ROLES.items()]
        await tap.declare()
        say(f"planning {plan.callbacks} callbacks")
        planned = plan_callbacks(files.config, plan.callbacks, run_id)
        supervisor = await stack.enter_async_context(Supervisor(workdir / "logs", env, specs))
        registrar = await stack.enter_async_context(
            Registrar(f"http://127.0.0.1:{admin_port}", files.admin_token, plan.give_up_s)
        )
        load = Load(
            f"http://127.0.0.1:{listen_port}",
            planned,
            copies=plan.copies,
            concurrency=plan.concurrency,
            give_up_s=plan.give_up_s,
            open_callbacks=plan.open_callbacks,
        )
        faults = FaultDriver(plan, supervisor, servers, load)
        faults.say = say
        started_at = time.monotonic()
        try:
            await supervisor.start_all()
            await supervisor.wait_all_ready(plan.ready_within_s)
            say(f"all {len(specs)} roles ready in {time.monotonic() - started_at:.1f} s")
            before = [p for p in planned if p.registration == "before"]
            await asyncio.gather(*(registrar.register(p) for p in before))
            load.on_dispatch = lambda p: registrar.spawn(p) if p.registration == "with" else None
            load.on_ack = lambda p: registrar.spawn(p) if p.registration == "after" else None
            pace = _pacing(plan, faults)
            say("load and faults")
            await _until_done(supervisor.failed, load.run(pace), faults.run())
            await registrar.wait()
            say(f"load done in {load.finished_at - load.started_at:.1f} s; draining")
            drain_started = time.monotonic()
            drained = await wait_drained(role_db_url, merchant, load, plan.drain_within_s)
            drain_s = time.monotonic() - drain_started
            if not drained:
                problems.append(f"the pipeline did not drain within {plan.drain_within_s:g} s")
        except Exception as exc:
            problems.append(f"the run stopped early: {type(exc).__name__}: {exc}")
        say("reading the event tap")
        tap_ids = await tap.read_all()
        say("stopping every role (SIGTERM)")
        exits = await supervisor.stop_all(plan.shutdown_grace_s + 5)
        problems.extend(supervisor.unexpected)
        say("verifying")
        report = await verify(
            plan=plan,
            database_url=role_db_url,
            env=env,
            namespace=namespace,
            tap=tap,
            tap_ids=tap_ids,
            load=load,
            merchant=merchant,
            registrar_problems=registrar.problems,
            faults=faults.records,
            exits=exits,
            logs=supervisor.logs,
            secrets=secrets_in(role_db_url, amqp_url),
        )
        report.problems[:0] = problems
        report.released = registrar.released
        report.drain_s = drain_s
        return report
    raise AssertionError("unreachable")  # pragma: no cover
