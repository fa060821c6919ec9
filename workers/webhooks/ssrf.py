"""SSRF guard: merchant URLs must not reach loopback, private, link-local or metadata hosts.

A merchant URL is configuration, but a webhook worker sits inside the network, so a URL that
resolves to ``127.0.0.1``, ``10.x``, ``169.254.169.254`` (cloud metadata) and the like would let
whoever edits it probe internal services. Checking the name once and connecting later is not
enough (DNS rebinding: the second lookup answers differently), so the check lives in the
resolver aiohttp connects through: the addresses checked are the addresses connected to.
aiohttp skips the resolver for IP-literal hosts, so ``check_url`` covers those before a
request is made. Merchants with ``allow_private = true`` (local runs, tests) skip the guard.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["BlockedAddress", "GuardedResolver", "check_url", "is_forbidden"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints, named explicitly although the ranges below already cover them.
_METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(OSError):
    """The URL's host is (or resolves only to) an address webhooks may not reach."""


def is_forbidden(address: str | IPAddress) -> bool:
    """True for loopback, private, link-local, multicast, reserved and metadata addresses."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip in _METADATA:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address smuggled inside IPv6 is judged as the IPv4 address it reaches.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden(embedded):
            return True
    return (
        not ip.is_global
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse non-HTTP URLs, and IP-literal hosts the guard forbids (names: the resolver)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress(f"webhook URL must be http(s) with a host, not {parts.scheme!r}")
    if allow_private:
        return
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a name: GuardedResolver checks what it resolves to
    if is_forbidden(ip):
        raise BlockedAddress(f"webhook host {ip} is not a public address")


def _forbidden_or_odd(host: str) -> bool:
    try:
        return is_forbidden(host)
    except ValueError:
        return True  # not an address we can judge: not one we connect to


class GuardedResolver(AbstractResolver):
    """Wraps a resolver and keeps only addresses the guard allows; none left → refused."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not _forbidden_or_odd(r["host"])]
        if not allowed:
            raise BlockedAddress(f"webhook host {host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
