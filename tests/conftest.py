"""Fixtures for tests against real Postgres and RabbitMQ (see tests/servers.py and README).

- ``database_url`` (session): a fresh, migrated ``payhook_test_<hex>`` database, dropped at the end.
- ``db``: an asyncpg connection to it; every public table except ``schema_migrations`` is
  truncated after the test. Request it (even unused) when a test writes through app code.
- ``amqp_url`` (session), ``namespace``: a fresh ``t<hex12>`` prefix per test whose well-known
  queues/exchanges are deleted afterwards; ``amqp_cleanup.register(name)`` adds other names.
- ``broker_control``: ``await broker_control.restart()``; skips unless the broker is ours.
- ``postgres_control``: ``await postgres_control.restart()``; skips unless Postgres is ours.
- ``loop_errors`` (autouse): a test fails if the event loop reported an unhandled exception;
  a test that provokes one on purpose asserts on ``loop_errors.contexts`` and clears it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from .servers import (
    BrokerControl,
    BrokerJanitor,
    LoopErrors,
    PostgresControl,
    amqp_server_url,
    broker_is_ours,
    create_database,
    database_server_url,
    delete_broker_names,
    drop_database,
    leftover_broker_names,
    postgres_is_ours,
    truncate_all,
    wait_for_amqp,
)

# No per-example deadline: on a loaded 2-core CI machine a slow example is load, not a bug,
# and speed is measured by bench/, never by tests.
settings.register_profile("payhook", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("payhook")


# ---------------------------------------------------------------------------------- Postgres


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    server_url = database_server_url()
    try:
        url = await create_database(server_url)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"no usable Postgres at {server_url} ({exc!r}); run scripts/test, or "
            "scripts/services.sh start first",
            pytrace=False,
        )
    try:
        # Imported lazily: the migrations module may not exist yet while the project grows.
        if importlib.util.find_spec("workers.db") is not None:
            from workers.db import migrate

            await migrate(url)
        yield url
    finally:
        await drop_database(server_url, url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        yield conn
    finally:
        try:
            await asyncio.wait_for(conn.close(), timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            conn.terminate()
        await truncate_all(database_url)


# ---------------------------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
async def amqp_url() -> str:
    url: str = amqp_server_url()
    try:
        await wait_for_amqp(url, patience=5)
    except Exception as exc:
        pytest.fail(
            f"no RabbitMQ at {url} ({exc!r}); run scripts/test, or scripts/services.sh start first",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def _issued_namespaces() -> set[str]:
    return set()


@pytest.fixture(scope="session")
async def _broker_sweep(amqp_url: str, _issued_namespaces: set[str]) -> AsyncIterator[None]:
    """At the end of the session, delete what tests left under their namespaces on our node.

    Only our private node can be listed (rabbitmqctl); this catches names nobody registered,
    such as the per-delay retry queues.
    """
    yield
    if not _issued_namespaces or not broker_is_ours():
        return
    prefixes = {f"{ns}." for ns in _issued_namespaces}
    leftovers = await asyncio.to_thread(leftover_broker_names, prefixes)
    if leftovers:
        await delete_broker_names(amqp_url, leftovers)


@pytest.fixture
async def amqp_cleanup(amqp_url: str, _broker_sweep: None) -> AsyncIterator[BrokerJanitor]:
    janitor = BrokerJanitor(amqp_url)
    yield janitor
    await janitor.cleanup()


@pytest.fixture
def namespace(amqp_cleanup: BrokerJanitor, _issued_namespaces: set[str]) -> str:
    ns = f"t{secrets.token_hex(6)}"
    _issued_namespaces.add(ns)
    amqp_cleanup.add_namespace(ns)
    return ns


@pytest.fixture
def broker_control(amqp_url: str) -> BrokerControl:
    if not broker_is_ours():
        pytest.skip(
            f"the broker at {amqp_url} was not started by scripts/services.sh, so it is not "
            "ours to restart (set PAYHOOK_TEST_BROKER_CONTROL=1 to override)"
        )
    return BrokerControl(amqp_url)


@pytest.fixture
def postgres_control(database_url: str) -> PostgresControl:
    if not postgres_is_ours():
        pytest.skip(
            "the Postgres server was not started by scripts/services.sh, so it is not ours to "
            "restart (set PAYHOOK_TEST_BROKER_CONTROL=1 to override)"
        )
    return PostgresControl(database_server_url())


# --------------------------------------------------------------------------- loop exceptions


@pytest.fixture(autouse=True)
async def loop_errors() -> AsyncIterator[LoopErrors]:
    errors = LoopErrors(asyncio.get_running_loop())
    errors.install()
    try:
        yield errors
        # Let pending callbacks run, and collect garbage so that "Task exception was never
        # retrieved" is reported now rather than during some later test.
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        errors.uninstall()
    if errors.contexts:
        pytest.fail(f"the event loop saw unhandled exceptions:\n{errors.describe()}", pytrace=False)
