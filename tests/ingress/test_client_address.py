"""``client_address``: who sent the request, when proxies in front of the ingress say so."""

from __future__ import annotations

import ipaddress

import pytest

from contracts.config import IPNetwork
from ingress.client_address import client_address, parse_hop

PROXIES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("2001:db8:ffff::/48"),
)
PAYSEPRO = "51.195.200.178"
CLIENT = "203.0.113.7"


def resolve(peer: str | None, *lines: str) -> str:
    return client_address(peer, list(lines), PROXIES)


# --- whose header is believed ----------------------------------------------------------------


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert resolve(CLIENT, PAYSEPRO) == CLIENT
    assert resolve(CLIENT, PAYSEPRO, f"{PAYSEPRO}, 10.0.0.1") == CLIENT
    assert client_address("10.0.0.1", [PAYSEPRO], ()) == "10.0.0.1"  # no proxy configured


def test_no_peer_is_empty_and_never_trusted() -> None:
    assert resolve(None, PAYSEPRO) == ""
    assert resolve("", PAYSEPRO) == ""


def test_trusted_peer_without_header_is_itself() -> None:
    assert resolve("10.0.0.1") == "10.0.0.1"
    assert resolve("10.0.0.1", "", " , ") == "10.0.0.1"


def test_trusted_peer_names_the_client() -> None:
    assert resolve("10.0.0.1", CLIENT) == CLIENT


def test_read_from_the_right_through_every_trusted_hop() -> None:
    # client → 10.0.0.3 → 10.0.0.2 → (peer) 10.0.0.1; the client wrote the leftmost element.
    assert resolve("10.0.0.1", f"{PAYSEPRO}, {CLIENT}, 10.0.0.3, 10.0.0.2") == CLIENT


def test_only_proxies_means_the_first_of_them() -> None:
    assert resolve("10.0.0.1", "10.0.0.9, 10.0.0.2") == "10.0.0.9"


# --- several header lines --------------------------------------------------------------------


def test_a_spoofed_first_line_does_not_win() -> None:
    """The client sends ``X-Forwarded-For: <Paysepro>``; the proxy adds its own line with the
    address it really saw. Reading the first line only would have said Paysepro."""
    assert resolve("10.0.0.1", PAYSEPRO, CLIENT) == CLIENT


def test_lines_are_one_list_in_order() -> None:
    lines = (f"{PAYSEPRO}, 198.51.100.1", f"{CLIENT}, 10.0.0.3", "10.0.0.2")
    assert resolve("10.0.0.1", *lines) == CLIENT
    # The same elements in one line give the same answer.
    assert resolve("10.0.0.1", ", ".join(lines)) == CLIENT


def test_a_line_of_only_proxies_passes_to_the_line_before() -> None:
    assert resolve("10.0.0.1", CLIENT, "10.0.0.3", "10.0.0.2, 10.0.0.4") == CLIENT


# --- IPv6, ports, whitespace, empty elements -------------------------------------------------


@pytest.mark.parametrize(
    ("hop", "client"),
    [
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[::1]:443", "::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),  # written canonically
        ("203.0.113.7:8080", CLIENT),
        ("\t 203.0.113.7 \t", CLIENT),
        ("::ffff:203.0.113.7", CLIENT),  # IPv4-mapped: the IPv4 address
        ("[::ffff:203.0.113.7]:80", CLIENT),
    ],
)
def test_hop_forms(hop: str, client: str) -> None:
    assert resolve("10.0.0.1", hop) == client


def test_ipv6_proxies_and_peer() -> None:
    assert resolve("2001:db8:ffff::1", f"{CLIENT}, [2001:db8:ffff::2]:8443") == CLIENT
    assert resolve("[2001:db8:ffff::1]", CLIENT) == CLIENT
    assert resolve("2001:db8:1::1", PAYSEPRO) == "2001:db8:1::1"  # not one of ours


def test_mapped_peer_is_the_ipv4_proxy() -> None:
    """A dual-stack listener reports IPv4 peers as ``::ffff:a.b.c.d``."""
    assert resolve("::ffff:10.0.0.1", CLIENT) == CLIENT
    assert resolve("::ffff:203.0.113.9", PAYSEPRO) == "203.0.113.9"


def test_empty_elements_are_skipped() -> None:
    assert resolve("10.0.0.1", f",{CLIENT},, ,", " ", "10.0.0.2,") == CLIENT


# --- garbage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "unknown",
        "_hidden",
        "not-an-ip",
        "203.0.113.7.1",
        "[203.0.113.7]",  # brackets are for IPv6
        "203.0.113.7:99999",
        "203.0.113.7:",
        "[2001:db8::1",
        "2001:db8::1]:443",
        '"203.0.113.7"',
        "300.0.0.1",
    ],
)
def test_garbage_hop_is_never_the_client(garbage: str) -> None:
    # Right next to the peer: the peer (the proxy that wrote it) is all that was checked.
    assert resolve("10.0.0.1", f"{PAYSEPRO}, {garbage}") == "10.0.0.1"
    # Behind a trusted hop: that hop. Nothing left of the garbage is believed.
    assert resolve("10.0.0.1", f"{PAYSEPRO}, {garbage}, 10.0.0.2") == "10.0.0.2"
    assert resolve("10.0.0.1", PAYSEPRO, garbage) == "10.0.0.1"


def test_garbage_left_of_the_client_does_not_matter() -> None:
    assert resolve("10.0.0.1", f"unknown, {CLIENT}") == CLIENT


def test_parse_hop() -> None:
    assert parse_hop(" [::1]:443 ") == ipaddress.ip_address("::1")
    assert parse_hop("192.0.2.1:0") == ipaddress.ip_address("192.0.2.1")
    assert parse_hop("192.0.2.1:65535") == ipaddress.ip_address("192.0.2.1")
    assert parse_hop("192.0.2.1:65536") is None
    assert parse_hop("") is None
