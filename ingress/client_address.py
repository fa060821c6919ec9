"""The client's address: the socket peer, or ``X-Forwarded-For`` behind a trusted proxy only.

Allow-lists (Paysepro has nothing else) are worthless if any client can claim an address, so
the header is read only when the direct peer is a configured proxy, and then from the right:
each trusted proxy appended the address it got the request from, so the first hop that is not
itself a trusted proxy is the client, and everything left of it is whatever the client wrote.

- **Every line counts.** HTTP joins repeated header lines into one comma-separated list, in
  order (RFC 9110 §5.3). A client can send its own ``X-Forwarded-For`` line, and a proxy that
  adds a line of its own (instead of appending to the client's) puts the true address in the
  *last* line: reading only the first would let anyone behind that proxy pose as any address.
- **Garbage ends the walk.** A hop that is not an IP address (``unknown``, an obfuscated name,
  a typo) cannot be checked against the trusted proxies, so nothing at or left of it is
  believed: the client is the last address that was checked, i.e. the trusted proxy that
  wrote the garbage hop (or the peer itself). That is never a value a client chose, and it
  fails closed in an allow-list that lists providers, not our own proxies.
- **Forms accepted per hop:** ``203.0.113.7``, ``203.0.113.7:443``, ``2001:db8::1``,
  ``[2001:db8::1]``, ``[2001:db8::1]:443``, surrounded by spaces or tabs; empty elements
  (``a, ,b``) are skipped as the list syntax asks. IPv4-mapped IPv6 (``::ffff:192.0.2.1``) is
  read as the IPv4 address, so it matches IPv4 allow-lists and proxies.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence

from contracts.config import IPNetwork

__all__ = ["client_address", "parse_hop"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BRACKETED = re.compile(r"^\[([^\]]+)\](?::(\d{1,5}))?$")
_IPV4_PORT = re.compile(r"^([0-9.]+):(\d{1,5})$")


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> str:
    """The client's address, given the socket peer and every ``X-Forwarded-For`` line in the
    order received (``request.headers.getall("X-Forwarded-For", [])``)."""
    peer = peer or ""
    address = parse_hop(peer)
    if address is None or not _trusted(address, trusted_proxies):
        return str(address) if address is not None else peer
    for hop in reversed(list(_hops(forwarded_for))):
        found = parse_hop(hop)
        if found is None:
            break  # garbage: believe nothing from here on (see the module docstring)
        address = found
        if not _trusted(address, trusted_proxies):
            break  # the first hop no trusted proxy stands for: the client
    return str(address)


def parse_hop(text: str) -> IPAddress | None:
    """One ``X-Forwarded-For`` element as an address (port and brackets dropped), or ``None``."""
    text = text.strip(" \t")
    bracketed = _BRACKETED.match(text)
    with_port = bracketed or _IPV4_PORT.match(text)
    host, port = with_port.groups() if with_port else (text, None)
    if port is not None and int(port) > 65535:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if bracketed and address.version != 6:
        return None  # "[192.0.2.1]": brackets are for IPv6 only (RFC 3986); refuse, not guess
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _hops(lines: Sequence[str]) -> Iterator[str]:
    for line in lines:
        for element in line.split(","):
            if element.strip(" \t"):
                yield element


def _trusted(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in networks)
