"""Paysepro: no signature; source address plus uid/mid, §5."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from contracts.errors import ConfigError
from contracts.statuses import Status, VerifiedBy
from ingress.providers.paysepro import DEFAULT_SOURCE

from .helpers import account, payment, raw, refusal, simulated, verify

NOT_ALLOWED = (403, "source address not allowed")

EXAMPLE = {
    "uid": "12345",
    "mid": "54321",
    "country": "ES",
    "price": "10.00",
    "currency": "EUR",
    "code": "ABC123",
    "result": "ok",
    "ucode": "ORD-1001",
    "mode": "debug",
    "email": "payer@example.com",
    "type": "paysafecard",
}


def query(**change: str) -> str:
    return urlencode({k: v for k, v in {**EXAMPLE, **change}.items() if v != "-"})


def test_worked_example() -> None:
    accepted = verify("paysepro", account("paysepro"), raw(query=query(), remote=DEFAULT_SOURCE))
    cb = accepted.callback
    assert (accepted.ack.status, accepted.ack.body) == (200, b"OK")
    assert (cb.transaction_id, cb.order_id, cb.provider_status, cb.status) == (
        "ABC123",
        "ORD-1001",
        "ok",
        Status.SUCCEEDED,
    )
    assert (cb.amount, cb.currency, cb.test) == (1000, "EUR", True)
    assert cb.verified_by is VerifiedBy.SOURCE_ADDRESS
    assert cb.details == {"type": "paysafecard", "country": "ES"}  # no payer e-mail


def test_ko_then_ok_is_one_payment_two_callbacks() -> None:
    acc = account("paysepro")
    ko = verify("paysepro", acc, raw(query=query(result="ko"), remote=DEFAULT_SOURCE)).callback
    ok = verify("paysepro", acc, raw(query=query(), remote=DEFAULT_SOURCE)).callback
    assert ko.status is Status.PENDING
    assert ok.status is Status.SUCCEEDED
    assert ko.transaction_id == ok.transaction_id
    assert ko.id != ok.id


def test_unknown_result_is_unrecognized() -> None:
    request = raw(query=query(result="maybe"), remote=DEFAULT_SOURCE)
    assert verify("paysepro", account("paysepro"), request).callback.status is Status.UNRECOGNIZED


def test_live_mode() -> None:
    request = raw(query=query(mode="-"), remote=DEFAULT_SOURCE)
    assert verify("paysepro", account("paysepro"), request).callback.test is False


@pytest.mark.parametrize("remote", ["203.0.113.7", "51.195.200.179", "", "not-an-ip"])
def test_other_sources_refused_by_default(remote: str) -> None:
    assert refusal("paysepro", account("paysepro"), raw(query=query(), remote=remote)) == (
        NOT_ALLOWED
    )


def test_account_allow_list_replaces_default() -> None:
    acc = account("paysepro", allowed_ips=["10.0.0.0/8"])
    assert verify("paysepro", acc, raw(query=query(), remote="10.1.2.3")).callback
    assert refusal("paysepro", acc, raw(query=query(), remote=DEFAULT_SOURCE)) == NOT_ALLOWED


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"uid": "99999"}, 422, "wrong uid"),
        ({"mid": "1"}, 422, "wrong mid"),
        ({"uid": "-"}, 400, "missing uid"),
        ({"code": "-"}, 400, "missing code"),
        ({"result": "-"}, 400, "missing result"),
        ({"currency": "ZZZ"}, 422, "unknown currency"),
        ({"currency": "-"}, 400, "price without currency"),
        ({"price": "ten"}, 400, "invalid amount"),
        ({"price": "10.001"}, 400, "invalid amount"),
    ],
)
def test_rejections(change: dict[str, str], status: int, reason: str) -> None:
    request = raw(query=query(**change), remote=DEFAULT_SOURCE)
    assert refusal("paysepro", account("paysepro"), request) == (status, reason)


def test_simulator_claims_the_default_source() -> None:
    acc = account("paysepro")
    sim, request = simulated("paysepro", acc, payment(test=True))
    assert sim.headers["X-Forwarded-For"] == DEFAULT_SOURCE
    assert verify("paysepro", acc, request).callback.test is True


def test_check_account() -> None:
    with pytest.raises(ConfigError, match="uid"):
        account("paysepro", uid=None)
    with pytest.raises(ConfigError, match="mid"):
        account("paysepro", mid=None)
