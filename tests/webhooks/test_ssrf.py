"""The SSRF guard: unit checks on addresses and resolution, then real attempts."""

from __future__ import annotations

import socket

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.servers import BrokerJanitor
from workers.webhooks.ssrf import BlockedAddress, GuardedResolver, check_url, is_forbidden

from .helpers import (
    MerchantServer,
    MerchantSpec,
    declare,
    delivery_states,
    fetch,
    make_config,
    make_event,
    make_settings,
    new_secret,
    publish_events,
    running_worker,
    wait_until,
)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "169.254.10.1",
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2001:db8::1",  # documentation
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450::1"])
def test_public_addresses(address: str) -> None:
    assert not is_forbidden(address)


def test_check_url_refuses_ip_literals_and_odd_schemes_unless_allowed() -> None:
    with pytest.raises(BlockedAddress):
        check_url("http://127.0.0.1:8080/hooks", allow_private=False)
    with pytest.raises(BlockedAddress):
        check_url("http://[::1]/hooks", allow_private=False)
    with pytest.raises(BlockedAddress):
        check_url("http://169.254.169.254/latest/meta-data", allow_private=False)
    with pytest.raises(BlockedAddress):
        check_url("file:///etc/passwd", allow_private=True)
    check_url("http://127.0.0.1:8080/hooks", allow_private=True)
    check_url("https://8.8.8.8/hooks", allow_private=False)
    check_url("https://shop.example/hooks", allow_private=False)  # names: the resolver's job


class StubResolver(AbstractResolver):
    """Answers with fixed addresses, like a DNS server an attacker controls might."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_keeps_only_public_addresses() -> None:
    guarded = GuardedResolver(StubResolver("10.0.0.5", "93.184.216.34", "::1"))
    assert [r["host"] for r in await guarded.resolve("shop.example", 443)] == ["93.184.216.34"]


@pytest.mark.parametrize(
    "addresses", [("127.0.0.1",), ("169.254.169.254",), ("192.168.0.1", "fd00::1"), ("bogus",)]
)
async def test_resolver_refuses_names_that_resolve_only_inward(addresses: tuple[str, ...]) -> None:
    with pytest.raises(BlockedAddress):
        await GuardedResolver(StubResolver(*addresses)).resolve("rebind.example", 80)


async def test_private_urls_are_refused_unless_allowed(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0]
    async with MerchantServer().serving() as server:
        by_name = server.url.replace("127.0.0.1", "localhost")  # goes through the resolver
        config = make_config(
            [
                MerchantSpec("literal", server.url, (new_secret(),), {"allow_private": False}),
                MerchantSpec("named", by_name, (new_secret(),), {"allow_private": False}),
                MerchantSpec("local", server.url, (new_secret(),), {"allow_private": True}),
            ],
            schedule,
        )
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        events = [make_event(m) for m in ("literal", "named", "local")]
        async with running_worker(make_settings(database_url, amqp_url, namespace), config):
            await publish_events(amqp_url, namespace, events)
            await wait_until(lambda: _settled(database_url, 3), within=10)

    states = {m: s for (_, m), s in (await delivery_states(database_url)).items()}
    assert states == {"literal": "failed", "named": "failed", "local": "delivered"}
    rows = await fetch(database_url, "SELECT merchant, error_class FROM webhook_attempts")
    errors = {r["merchant"]: r["error_class"] for r in rows}
    assert errors == {"literal": "blocked_address", "named": "blocked_address", "local": None}
    # Only the allowed merchant's request ever reached the server.
    assert [r.headers["webhook-id"] for r in server.requests] == [events[2]["id"]]


async def _settled(database_url: str, count: int) -> bool:
    states = await delivery_states(database_url)
    return len(states) == count and "pending" not in states.values()
