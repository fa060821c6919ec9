"""What a chaos run is made of: its configuration on disk, the roles' environment, the event
tap, and control over the two servers it restarts.

Kept apart from the run itself (``harness``) so the benchmark (``bench/chaos.py``) and the
test build exactly the same system.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika

from contracts.config import Config
from contracts.topology import Topology
from payhook.config_files import load_config
from tests.ports import free_port
from tests.servers import SERVICES, wait_for_amqp
from tests.servers import amqp_server_url as amqp_server_url
from tests.servers import database_server_url as database_server_url

__all__ = [
    "MERCHANT",
    "WEBHOOK_BUSY_DELAY_S",
    "ChaosFiles",
    "EventTap",
    "ServerControl",
    "free_port",
    "role_environment",
    "run_command",
    "secrets_in",
    "with_password",
    "write_config",
]

MERCHANT = "shop"
WEBHOOK_BUSY_DELAY_S = 1.0  # PAYHOOK_WEBHOOK_BUSY_DELAY_S below: its hop queue is checked too


@dataclass(frozen=True, slots=True)
class ChaosFiles:
    config_path: Path
    config: Config
    merchant_secret: str  # whsec_…
    admin_token: str


def write_config(
    workdir: Path,
    merchant_url: str,
    schedule: Sequence[float],
    merchant_secret: str,
    max_in_flight: int = 16,
) -> ChaosFiles:
    """A TOML config with an account for each of the five providers and one merchant.

    Every secret is a fresh random value in a file under ``workdir/secrets`` (``file:`` refs).
    The merchant's breaker is lenient (10 failures, 1 s cool-down) because the merchant fails
    a fifth of the attempts on purpose; its default (5, 60 s) would open it now and then and
    skip whole stretches of a 30 s schedule.
    """
    values = {
        "paysera-password": secrets.token_hex(16),
        "paygol-secret": secrets.token_hex(16),
        "paycore-live-key": "sk_live_" + secrets.token_hex(12),
        "paycore-test-key": "sk_test_" + secrets.token_hex(12),
        "paypro-app-secret": secrets.token_hex(16),
        "shop-webhook-secret": merchant_secret,
        "admin-token": secrets.token_urlsafe(24),
    }
    folder = workdir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        path = folder / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
    delays = ", ".join(f"{d:g}" for d in schedule)
    text = f"""\
# Written by tests/chaos/system.py for one chaos run.
[webhooks]
schedule = [{delays}]

[admin]
tokens = ["file:secrets/admin-token"]

[merchants.{MERCHANT}]
webhook_url = "{merchant_url}"
secrets = ["file:secrets/shop-webhook-secret"]
events = ["*"]
allow_private = true
timeout_s = 5
connect_timeout_s = 5
max_in_flight = {max_in_flight}
breaker_threshold = 10
breaker_cooldown_s = 1

[providers.paysera.main]
merchant = "{MERCHANT}"
project_id = "123456"
password = "file:secrets/paysera-password"

[providers.paygol.main]
merchant = "{MERCHANT}"
service_id = "123"
secret = "file:secrets/paygol-secret"

[providers.paycore.main]
merchant = "{MERCHANT}"
live_key = "file:secrets/paycore-live-key"
test_key = "file:secrets/paycore-test-key"

[providers.paypro.idr]
merchant = "{MERCHANT}"
app_secret = "file:secrets/paypro-app-secret"
currency = "IDR"
salt_position = "either"
kind = "payment"

# Paysepro signs nothing: the source address is the proof, and the ingress sees 127.0.0.1.
[providers.paysepro.main]
merchant = "{MERCHANT}"
uid = "12345"
mid = "54321"
allowed_ips = ["127.0.0.1"]
"""
    path = workdir / "payhook.toml"
    path.write_text(text, encoding="utf-8")
    return ChaosFiles(path, load_config(path), values["shop-webhook-secret"], values["admin-token"])


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in it, unless it has one (trust auth ignores it)."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or 'postgres'}:{password}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def secrets_in(*urls: str) -> list[str]:
    """What must never appear in a log: each URL's ``user:password`` (and a long password)."""
    found = []
    for url in urls:
        for one in url.split(","):
            parts = urlsplit(one.strip())
            if parts.password:
                found.append(f"{parts.username or ''}:{parts.password}")
                if len(parts.password) >= 8:
                    found.append(parts.password)
    return sorted(set(found))


def role_environment(
    *,
    database_url: str,
    amqp_url: str,
    namespace: str,
    config_path: Path,
    listen_port: int,
    admin_port: int,
    log_level: str,
    shutdown_grace_s: float,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment every role process gets (no PAYHOOK_* leaks in from ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYHOOK_")}
    env.update(
        PAYHOOK_DATABASE_URL=database_url,
        PAYHOOK_AMQP_URL=amqp_url,
        PAYHOOK_AMQP_NAMESPACE=namespace,
        PAYHOOK_CONFIG_PATH=str(config_path),
        PAYHOOK_LISTEN_HOST="127.0.0.1",
        PAYHOOK_LISTEN_PORT=str(listen_port),
        PAYHOOK_LISTEN_REUSE_PORT="true",
        PAYHOOK_ADMIN_HOST="127.0.0.1",
        PAYHOOK_ADMIN_PORT=str(admin_port),
        PAYHOOK_HEALTH_HOST="127.0.0.1",
        PAYHOOK_LOG_LEVEL=log_level,
        PAYHOOK_LOG_FORMAT="json",
        PAYHOOK_SHUTDOWN_GRACE_S=f"{shutdown_grace_s:g}",
        # A confirm that does not come is a 503 (the provider resends) after 5 s, not 10.
        PAYHOOK_PUBLISH_TIMEOUT_S="5",
        PAYHOOK_WEBHOOK_BUSY_DELAY_S=f"{WEBHOOK_BUSY_DELAY_S:g}",
        **(extra or {}),
    )
    return env


async def run_command(
    argv: Sequence[str], env: Mapping[str, str], patience: float
) -> tuple[int | None, str]:
    """Run ``argv`` to its end (killed after ``patience`` s: code None); code and output.

    The output goes to a file, not a pipe: a server the command starts in the background
    (``services.sh restart-rabbitmq``) may inherit the write end of a pipe on loops that do
    not close descriptors in children (uvloop), and reading to EOF would then never end.
    """
    with tempfile.TemporaryFile() as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
        code: int | None
        try:
            async with asyncio.timeout(patience):
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            code = None
        out.seek(0)
        return code, out.read().decode(errors="replace")


class ServerControl:
    """Restarts this checkout's private RabbitMQ and Postgres (``scripts/services.sh``)."""

    def __init__(self, amqp_url: str, database_server: str) -> None:
        self.amqp_url = amqp_url
        self.database_server = database_server

    async def is_ours(self, kind: str) -> bool:
        code, _ = await self._services("is-ours", kind, patience=30)
        return code == 0

    async def restart_rabbitmq(self) -> None:
        await self._services("restart-rabbitmq", patience=100)
        await wait_for_amqp(self.amqp_url, patience=30)

    async def restart_postgres(self) -> None:
        await self._services("restart-postgres", patience=100)

    async def _services(self, *args: str, patience: float) -> tuple[int | None, str]:
        env = os.environ | {
            "PAYHOOK_AMQP_URL": self.amqp_url,
            "PAYHOOK_DATABASE_URL": self.database_server,
        }
        code, output = await run_command([str(SERVICES), *args], env, patience)
        if code != 0 and args[0] != "is-ours":
            raise RuntimeError(f"services.sh {' '.join(args)} exited {code}:\n{output[-2000:]}")
        return code, output


class EventTap:
    """A downstream consumer's own durable quorum queue bound to ``<ns>.events`` with ``#``.

    Declared before any callback is sent and read only at the end, in one go: every copy the
    relay published is there exactly once, so duplicates counted are the relay's.
    """

    def __init__(self, amqp_url: str, namespace: str) -> None:
        self.amqp_url = amqp_url
        self.topology = Topology(namespace)
        self.queue = self.queue_name(namespace)

    @staticmethod
    def queue_name(namespace: str) -> str:
        return f"{namespace}.chaos.tap"

    async def declare(self) -> None:
        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(
                self.queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(exchange, routing_key="#")
        finally:
            await connection.close()

    async def read_all(self, idle_s: float = 2.0, within: float = 300.0) -> list[str]:
        """Every event id in the queue (one per message, in order), emptying it; what was
        read by then if that takes longer than ``within`` seconds."""
        ids: list[str] = []
        deadline = time.monotonic() + within
        arrived = asyncio.Event()
        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.declare_queue(self.queue, passive=True)

            async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                ids.append(message.message_id or "")
                arrived.set()

            tag = await queue.consume(take, no_ack=True)
            while time.monotonic() < deadline:
                arrived.clear()
                try:
                    async with asyncio.timeout(idle_s):
                        await arrived.wait()
                except TimeoutError:
                    left = await channel.declare_queue(self.queue, passive=True)
                    if left.declaration_result.message_count == 0:
                        break
            await queue.cancel(tag)
        finally:
            await connection.close()
        return ids

    async def depths(self, names: Sequence[str]) -> dict[str, int | None]:
        """Messages ready in each queue (None: no such queue)."""
        out: dict[str, int | None] = {}
        connection = await aio_pika.connect(self.amqp_url)
        try:
            for name in names:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    out[name] = queue.declaration_result.message_count
                except aio_pika.exceptions.ChannelClosed:
                    out[name] = None
                finally:
                    if not channel.is_closed:
                        await channel.close()
        finally:
            await connection.close()
        return out
