"""Helpers behind the real-server fixtures in conftest.py.

The servers come from ``scripts/services.sh`` (or from whatever already answers at
``PAYHOOK_DATABASE_URL`` / ``PAYHOOK_AMQP_URL``). Each pytest session gets its own database;
each test gets its own broker namespace, so sessions and tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
import asyncpg

__all__ = [
    "AMQP_SUFFIXES",
    "BrokerControl",
    "BrokerJanitor",
    "LoopErrors",
    "PostgresControl",
    "amqp_server_url",
    "broker_is_ours",
    "create_database",
    "database_server_url",
    "drop_database",
    "leftover_broker_names",
    "postgres_is_ours",
    "truncate_all",
    "wait_for_amqp",
    "with_database",
]

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "scripts" / "services.sh"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:25432/payhook"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:25672/"

# Names contracts.topology.Topology derives from a namespace. Retry queues
# (``<ns>.webhooks.retry.<delay>``) depend on the schedule, so tests register those themselves.
AMQP_SUFFIXES = (
    ".callbacks",
    ".ledger",
    ".ledger.dead",
    ".ledger.dlx",
    ".events",
    ".webhooks",
    ".webhooks.dead",
    ".orders",
    ".orders.dead",
)


def database_server_url() -> str:
    return os.environ.get("PAYHOOK_DATABASE_URL") or DEFAULT_DATABASE_URL


def amqp_server_url() -> str:
    return os.environ.get("PAYHOOK_AMQP_URL") or DEFAULT_AMQP_URL


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


# ---------------------------------------------------------------------------------- Postgres


async def _connect_admin(server_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(server_url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        # The URL's database does not exist (yet): any server has "postgres".
        return await asyncpg.connect(with_database(server_url, "postgres"), timeout=10)


async def create_database(server_url: str) -> str:
    """Create ``payhook_test_<hex>`` on the server at ``server_url``; return its URL."""
    name = f"payhook_test_{secrets.token_hex(6)}"
    conn = await _connect_admin(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    conn = await _connect_admin(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def truncate_all(database_url: str) -> None:
    """Empty every table in schema public except the migrations ledger."""
    # lock_timeout: a connection the test leaked inside a transaction fails the test, not hangs.
    conn = await asyncpg.connect(database_url, timeout=10, server_settings={"lock_timeout": "10s"})
    try:
        tables = await conn.fetch(
            "SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(row["name"] for row in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------- RabbitMQ


async def wait_for_amqp(url: str, patience: float) -> None:
    """Return once a broker accepts an AMQP connection at ``url``; raise after ``patience`` s."""
    deadline = time.monotonic() + patience
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=3)
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            await connection.close()
            return


class BrokerJanitor:
    """Deletes the queues and exchanges a test created, by name.

    Without the management plugin the broker cannot be asked for its queue names, so a test's
    names are the namespace's well-known ones (:data:`AMQP_SUFFIXES`) plus whatever the test
    passes to :meth:`register`.
    """

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self._names: set[str] = set()

    def register(self, name: str) -> str:
        """Delete the queue and/or exchange called ``name`` after the test; returns ``name``."""
        self._names.add(name)
        return name

    def add_namespace(self, namespace: str) -> None:
        for suffix in AMQP_SUFFIXES:
            self.register(namespace + suffix)

    async def cleanup(self) -> None:
        """Delete every registered name as both a queue and an exchange; both are idempotent."""
        if not self._names:
            return
        await delete_broker_names(self._url, sorted(self._names))
        self._names.clear()


async def delete_broker_names(amqp_url: str, names: list[str]) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=False)
        for name in names:
            for delete in (channel.queue_delete, channel.exchange_delete):
                try:
                    await delete(name)
                except aiormq.exceptions.ChannelClosed:
                    # e.g. ACCESS_REFUSED on a reserved name: carry on with a fresh channel.
                    channel = await connection.channel(publisher_confirms=False)
    finally:
        await connection.close()


def _services(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PAYHOOK_AMQP_URL": amqp_server_url()}
    return subprocess.run(
        [str(SERVICES), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def broker_is_ours() -> bool:
    """Whether this checkout's scripts/services.sh started the broker, so tests may restart it.

    ``PAYHOOK_TEST_BROKER_CONTROL=1`` (exported by scripts/test) or ``0`` decides; when unset,
    ask scripts/services.sh.
    """
    flag = os.environ.get("PAYHOOK_TEST_BROKER_CONTROL")
    if flag is not None:
        return flag == "1"
    return _services("is-ours", "rabbitmq", timeout=30).returncode == 0


def postgres_is_ours() -> bool:
    """Like ``broker_is_ours``, for Postgres (the same ``PAYHOOK_TEST_BROKER_CONTROL`` flag)."""
    flag = os.environ.get("PAYHOOK_TEST_BROKER_CONTROL")
    if flag is not None:
        return flag == "1"
    return _services("is-ours", "postgres", timeout=30).returncode == 0


def leftover_broker_names(prefixes: set[str]) -> list[str]:
    """Queues and exchanges on our private node whose names start with one of ``prefixes``."""
    names: list[str] = []
    for what in ("list_queues", "list_exchanges"):
        done = _services("ctl", what, "--quiet", "--no-table-headers", "name", timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {what} failed: {done.stderr.strip()}")
        names += [n for n in done.stdout.split() if n.startswith(tuple(prefixes))]
    return sorted(set(names))


async def _restart(what: str, env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(SERVICES),
        f"restart-{what}",
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(100):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"restart-{what} failed:\n{output.decode(errors='replace')}")


class PostgresControl:
    """Restarts the private Postgres (fast shutdown: every connection is cut, data kept)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    async def restart(self) -> None:
        await _restart("postgres", {"PAYHOOK_DATABASE_URL": self._url})


class BrokerControl:
    """Restarts the private RabbitMQ node (data kept) to prove what survives a broker restart."""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url

    async def restart(self) -> None:
        await _restart("rabbitmq", {"PAYHOOK_AMQP_URL": self._url})
        await wait_for_amqp(self._url, patience=30)


# --------------------------------------------------------------------------- loop exceptions


class LoopErrors:
    """Records what the event loop's exception handler receives while installed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.contexts: list[dict[str, Any]] = []
        self._loop = loop
        self._previous = loop.get_exception_handler()

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)
        loop.default_exception_handler(context)  # logs it, so the report shows the traceback

    def install(self) -> None:
        self._loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.set_exception_handler(self._previous)

    def clear(self) -> None:
        self.contexts.clear()

    def describe(self) -> str:
        lines = []
        for context in self.contexts:
            exc = context.get("exception")
            lines.append(f"- {context.get('message')}: {exc!r}" if exc else f"- {context}")
        return "\n".join(lines)
