"""The client's address: the socket peer, or ``X-Forwarded-For`` behind a trusted proxy only.

Allow-lists (Paysepro has nothing else) are worthless if any client can claim an address, so
the header is read only when the direct peer is a configured proxy, and then from the right:
the first hop that is not itself a trusted proxy is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from contracts.config import IPNetwork

__all__ = ["client_address"]


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> str:
    peer = peer or ""
    if not forwarded_for or not _in_any(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in_any(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def _in_any(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
