"""The runtime's pure parts: backoff, URL handling, settings validation."""

from __future__ import annotations

import asyncio
import time

import pytest

from contracts.config import Settings
from contracts.errors import ConfigError
from runtime.backoff import Backoff, sleep_or_stop, wait_any
from runtime.errors import describe, is_broker_outage, is_database_outage
from runtime.servers import mask_urls, server_name, split_urls


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(initial_s=0.2, cap_s=5.0, floor_s=0.05)
    draws = [[backoff.delay(attempt) for _ in range(200)] for attempt in range(12)]
    for attempt, values in enumerate(draws):
        ceiling = min(5.0, 0.2 * 2**attempt)
        assert all(0.05 <= v <= max(ceiling, 0.05) for v in values), attempt
    # Jittered: not every process waits the same; capped: the late attempts reach, not pass, 5 s.
    assert len({round(v, 6) for v in draws[8]}) > 150
    assert max(draws[11]) > 4.0
    assert backoff.delay(10_000) <= 5.0  # no overflow for very long outages


async def test_sleep_or_stop_returns_at_once_when_stopped() -> None:
    stop = asyncio.Event()
    assert await sleep_or_stop(stop, 0.01) is False
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await sleep_or_stop(stop, 60) is True
    assert time.monotonic() - started < 5
    first, second = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, second.set)
    await wait_any(first, second, timeout=60)
    assert second.is_set()
    assert not first.is_set()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("postgresql://u:p%40ss@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("dsn=postgresql://u:a:b@h/x, other", "dsn=postgresql://u:***@h/x, other"),
        (
            "amqp://a:one@n1:1/,amqp://a:two@n2:2/",
            "amqp://a:***@n1:1/,amqp://a:***@n2:2/",
        ),
        (
            "postgresql://postgres@127.0.0.1:25432/payhook",
            "postgresql://postgres@127.0.0.1:25432/payhook",
        ),
        ("no url here: user:pass@host", "no url here: user:pass@host"),
    ],
)
def test_mask_urls_hides_every_password(text: str, masked: str) -> None:
    assert mask_urls(text) == masked


def test_server_names_and_node_lists() -> None:
    assert server_name("amqp://guest:secret@10.0.0.1:5672/vhost") == "10.0.0.1:5672"
    assert server_name("postgresql://u:secret@[::1]:5432/db") == "[::1]:5432"
    assert server_name("amqp://host/") == "host"
    assert split_urls(" amqp://a/ ,, amqp://b/ ") == ["amqp://a/", "amqp://b/"]
    settings = Settings(amqp_url="amqp://g:p@n1:1/,amqp://g:p@n2:2/")
    assert settings.amqp_urls == ["amqp://g:p@n1:1/", "amqp://g:p@n2:2/"]


def test_settings_repr_never_shows_a_password() -> None:
    settings = Settings(
        database_url="postgresql://payhook:pg-secret@db:5432/payhook",
        amqp_url="amqp://payhook:mq-secret@n1:5672/,amqp://payhook:mq-secret@n2:5672/",
    )
    shown = repr(settings) + str(settings)
    assert "pg-secret" not in shown
    assert "mq-secret" not in shown
    assert "db:5432" in shown  # still says where


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("PAYHOOK_LOG_LEVEL", "verbose", "PAYHOOK_LOG_LEVEL='verbose': one of debug, info"),
        ("PAYHOOK_LOG_FORMAT", "xml", "PAYHOOK_LOG_FORMAT='xml': one of json, console"),
        ("PAYHOOK_HEALTH_PORT", "70000", "PAYHOOK_HEALTH_PORT=70000: not a TCP port"),
        ("PAYHOOK_AMQP_URL", " , ", "PAYHOOK_AMQP_URL is empty"),
        ("PAYHOOK_SHUTDOWN_GRACE_S", "-1", "PAYHOOK_SHUTDOWN_GRACE_S must be >= 0"),
    ],
)
def test_invalid_settings_are_configuration_errors(name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert reason in str(raised.value)


def test_outage_classification_and_descriptions() -> None:
    import aiormq
    import asyncpg

    assert is_database_outage(asyncpg.exceptions.InternalClientError("cut mid-message"))
    assert is_database_outage(ConnectionRefusedError())
    assert not is_database_outage(asyncpg.exceptions.UniqueViolationError("dup"))
    assert is_broker_outage(aiormq.exceptions.ChannelInvalidStateError("closed"))
    assert is_broker_outage(aiormq.exceptions.ConnectionClosed(541, "INTERNAL_ERROR"))
    assert not is_broker_outage(ValueError("bug"))
    assert describe(ConnectionRefusedError(111, "Connect call failed")) == "connection refused"
    assert describe(TimeoutError()) == "timed out"
    assert describe(RuntimeError("first line\nsecond")) == "RuntimeError: first line"


def test_a_nacked_publish_renews_the_session_but_a_return_does_not() -> None:
    import aiormq
    from pamqp.commands import Basic

    from runtime.errors import is_refused_publish

    assert is_refused_publish(aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=1)))
    assert not is_refused_publish(ConnectionRefusedError())
    assert not is_refused_publish(
        aiormq.exceptions.PublishError.__new__(aiormq.exceptions.PublishError)
    )


def test_readiness_waits_until_every_role_registered_its_dependencies() -> None:
    """An empty (or partial) set of dependencies must not read as "all up" at start."""
    from runtime.health import Health

    health = Health()
    assert not health.ready  # nothing registered yet: not ready
    health.dependency("relay.postgres").up()
    assert not health.ready  # the roles have not all started
    health.started = True
    assert health.ready
    health.dependency("relay.rabbitmq")
    assert not health.ready
