"""Merchants, events and a running webhook worker for the webhook tests.

Events are published straight to ``<ns>.events`` (as the relay would) and, where a test needs
replays, inserted into ``events`` too; nothing here depends on the ingress or the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from standardwebhooks import Webhook

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import Config, Settings, parse_config
from contracts.events import build_event, routing_key
from contracts.statuses import Kind, Status, VerifiedBy
from contracts.topology import HEADER_CORRELATION_ID, Topology
from tests.roles import role_context
from workers import amqp, db
from workers.webhooks.commands import register
from workers.webhooks.consumer import run_webhook_worker

PROVIDER = "paysera"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def account_of(merchant: str) -> str:
    return f"acct_{merchant}"


# ------------------------------------------------------------------------------- merchants


@dataclass
class Received:
    at: float  # time.monotonic() when the request arrived
    headers: dict[str, str]
    body: bytes


Responder = Callable[[int, web.Request], Awaitable[web.StreamResponse]]


async def ok(_: int, __: web.Request) -> web.StreamResponse:
    return web.Response(status=200, text="thanks")


def fail_first(times: int, status: int = 500) -> Responder:
    async def respond(n: int, _: web.Request) -> web.StreamResponse:
        return web.Response(status=status if n <= times else 200, text=f"answer {n}")

    return respond


@dataclass
class MerchantServer:
    """A merchant's endpoint on 127.0.0.1:<free port>; ``respond(n, request)`` answers call n."""

    respond: Responder = ok
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(time.monotonic(), dict(request.headers), await request.read())
        self.requests.append(received)
        async with self._arrived:
            self._arrived.notify_all()
        return await self.respond(len(self.requests), request)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[MerchantServer]:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        assert server.sockets
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            await runner.cleanup()

    async def wait_for(self, count: int, within: float = 20.0) -> None:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    def webhook_ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]


def verify_all(requests: Iterable[Received], secret: str) -> list[dict[str, Any]]:
    """Every request verifies with the merchant-side library; returns the parsed bodies."""
    hook = Webhook(secret)
    return [hook.verify(r.body, r.headers) for r in requests]


# ------------------------------------------------------------------------------- config


@dataclass
class MerchantSpec:
    id: str
    url: str
    secrets: tuple[str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)


def make_config(merchants: Iterable[MerchantSpec], schedule: Iterable[float]) -> Config:
    """A config with one Paysera account per merchant (``acct_<merchant>``)."""
    env: dict[str, str] = {}
    merchant_tables: dict[str, Any] = {}
    accounts: dict[str, Any] = {}
    for spec in merchants:
        refs = []
        for i, secret in enumerate(spec.secrets):
            name = f"WH_{spec.id.upper()}_{i}"
            env[name] = secret
            refs.append(f"env:{name}")
        merchant_tables[spec.id] = {
            "webhook_url": spec.url,
            "secrets": refs,
            "allow_private": True,
            **spec.extra,
        }
        accounts[account_of(spec.id)] = {"merchant": spec.id, "project_id": "1"}
    data = {
        "webhooks": {"schedule": list(schedule)},
        "merchants": merchant_tables,
        "providers": {PROVIDER: accounts},
    }
    return parse_config(data, environ=env)


BUSY_DELAY_S = 1.0  # the hop a delivery for a saturated endpoint takes (see declare)


def make_settings(database_url: str, amqp_url: str, namespace: str) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        shutdown_grace_s=3.0,
        publish_timeout_s=10.0,
        webhook_busy_delay_s=BUSY_DELAY_S,
    )


# ------------------------------------------------------------------------------- events


def make_event(merchant: str, status: Status = Status.SUCCEEDED) -> dict[str, Any]:
    """A CloudEvent for a hand-made Paysera callback on ``merchant``'s account."""
    callback = CallbackReceived(
        provider=PROVIDER,
        account=account_of(merchant),
        transaction_id=f"tx-{uuid.uuid4().hex[:12]}",
        provider_status="1",
        status=status,
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SIGNATURE,
        received_at="2024-05-01T12:00:00Z",
        raw=RawRequest("POST", "/callbacks/paysera/main", "", b"data=x&ss1=y", {}, "127.0.0.1"),
        order_id="order-1",
        amount=1250,
        currency="EUR",
        correlation_id=uuid.uuid4().hex,
    )
    return build_event(callback, merchant=merchant).to_dict()  # the JSON a publisher sends


async def publish_events(
    amqp_url: str, namespace: str, events: Iterable[Mapping[str, Any]]
) -> None:
    """Publish as the relay does: persistent, confirmed, to ``<ns>.events``."""
    topology = Topology(namespace)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(topology.events_exchange)
        for event in events:
            data = event["data"]
            message = aio_pika.Message(
                body=orjson.dumps(event),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/cloudevents+json",
                message_id=event["id"],
                headers={HEADER_CORRELATION_ID: event.get("correlationid", "")},
            )
            key = routing_key(Kind(data["kind"]), Status(data["status"]), data["provider"])
            await exchange.publish(message, routing_key=key, mandatory=True)
    finally:
        await connection.close()


async def insert_events(database_url: str, events: Iterable[Mapping[str, Any]]) -> None:
    """The ``events`` rows the ledger would have written (replays read bodies from there)."""
    conn = await db.connect(database_url)
    try:
        for event in events:
            data = event["data"]
            await conn.execute(
                "INSERT INTO events (id, type, source, subject, routing_key, provider, account,"
                " merchant, correlation_id, body, published_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())",
                event["id"],
                event["type"],
                event["source"],
                event["subject"],
                routing_key(Kind(data["kind"]), Status(data["status"]), data["provider"]),
                data["provider"],
                data["account"],
                data["merchant"],
                event.get("correlationid", ""),
                event,
            )
    finally:
        await conn.close()


# ------------------------------------------------------------------------------- worker


async def declare(amqp_url: str, namespace: str, schedule: Iterable[float], janitor: Any) -> None:
    """Declare the topology up front (so events published before the worker starts queue)."""
    topology = Topology(namespace)
    steps = sorted({d for d in schedule if d > 0})
    # The worker declares its busy hop itself; registered here so the test's janitor drops it.
    janitor.register(topology.webhooks_retry_queue(BUSY_DELAY_S))
    for delay in steps:
        janitor.register(topology.webhooks_retry_queue(delay))
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await amqp.declare_topology(channel, topology, steps)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, config: Config) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_webhook_worker(role_context("worker.webhooks", settings, config, stop))
    )
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, interval: float = 0.05
) -> None:
    """Poll ``check`` (a Postgres query: nothing to wait on but time) until it holds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polling another process's writes
            await asyncio.sleep(interval)


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await db.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def delivery_states(database_url: str) -> dict[tuple[str, str], str]:
    rows = await fetch(database_url, "SELECT event_id, merchant, state FROM webhook_deliveries")
    return {(r["event_id"], r["merchant"]): r["state"] for r in rows}


async def dead_messages(amqp_url: str, namespace: str) -> list[AbstractIncomingMessage]:
    topology = Topology(namespace)
    connection = await aio_pika.connect(amqp_url)
    out = []
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.webhooks_dead_queue)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            out.append(message)
    finally:
        await connection.close()
    return out


async def run_command(argv: list[str], settings: Settings, config: Config) -> int:
    """Run ``payhook <argv>`` through this area's ``register``, as the CLI would."""
    parser = argparse.ArgumentParser(prog="payhook")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = await args.handler(args, settings, lambda: config)
    return status
