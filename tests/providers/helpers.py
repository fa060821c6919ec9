"""Accounts and requests for provider-module tests (no servers needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contracts.callbacks import RawRequest
from contracts.config import ProviderAccount, parse_config
from ingress.providers import PROVIDERS
from ingress.providers.base import Accepted, Rejected, SimulatedPayment, SimulatedRequest
from ingress.simulator import to_raw_request
from payhook.config_files import read_secret_file

RECEIVED_AT = "2025-01-01T00:00:00.000000Z"

# Made-up secrets from providers.md's worked examples.
ENV = {
    "PAYSERA_PASSWORD": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "PAYSERA_PASSWORD_NEXT": "ffffeeeeddddccccbbbbaaaa99998888",
    "PAYGOL_SECRET": "00000000-1111-2222-3333-444444444444",
    "PAYGOL_SECRET_NEXT": "99999999-1111-2222-3333-444444444444",
    "PAYCORE_LIVE": "sk_live_made_up_secret",
    "PAYCORE_TEST": "sk_test_made_up_secret",
    "PAYPRO_SECRET": "made-up-app-secret",
    "PAYPRO_SECRET_NEXT": "next-made-up-app-secret",
}

DEFAULT_TABLES: Mapping[str, Mapping[str, Any]] = {
    "paysera": {"project_id": "123456", "password": "env:PAYSERA_PASSWORD"},
    "paygol": {"service_id": "123", "secret": "env:PAYGOL_SECRET"},
    "paycore": {"live_key": "env:PAYCORE_LIVE", "test_key": "env:PAYCORE_TEST"},
    "paypro": {"app_secret": "env:PAYPRO_SECRET", "currency": "IDR"},
    "paysepro": {"uid": "12345", "mid": "54321"},
}


def account(provider: str, name: str = "main", **table: Any) -> ProviderAccount:
    """An account as the config loader builds it; keyword options override the defaults."""
    merged = {**DEFAULT_TABLES[provider], **table}
    merged = {k: v for k, v in merged.items() if v is not None}
    config = parse_config(
        {"providers": {provider: {name: merged}}}, environ=ENV, read_file=read_secret_file
    )
    acc = config.account(provider, name)
    assert acc is not None
    PROVIDERS[provider].check_account(acc)
    return acc


def raw(
    method: str = "GET",
    query: str = "",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    remote: str = "203.0.113.7",
    path: str = "/callbacks/x/main",
) -> RawRequest:
    return RawRequest(method, path, query, body, dict(headers or {}), remote)


def verify(provider: str, acc: ProviderAccount, request: RawRequest) -> Accepted:
    return PROVIDERS[provider].verify(request, acc, RECEIVED_AT)


def rejected(provider: str, acc: ProviderAccount, request: RawRequest) -> Rejected:
    """The ``Rejected`` that verification raises (fails the test if it accepts)."""
    try:
        PROVIDERS[provider].verify(request, acc, RECEIVED_AT)
    except Rejected as exc:
        return exc
    raise AssertionError("request was accepted")


def refusal(provider: str, acc: ProviderAccount, request: RawRequest) -> tuple[int, str]:
    """``(status, reason)`` of the refusal: the status alone could come from another check."""
    exc = rejected(provider, acc, request)
    return exc.status, exc.reason


def simulated(
    provider: str, acc: ProviderAccount, payment: SimulatedPayment
) -> tuple[SimulatedRequest, RawRequest]:
    """The simulator's request and the raw request the ingress would build from it."""
    module = PROVIDERS[provider]
    sim = module.simulate(acc, payment)
    remote = sim.headers.get("X-Forwarded-For", "203.0.113.7")
    return sim, to_raw_request(module, sim, path=f"/callbacks/{provider}/{acc.name}", remote=remote)


def payment(status: str = "succeeded", **kwargs: Any) -> SimulatedPayment:
    values: dict[str, Any] = {
        "order_id": "ORD-1001",
        "amount": "12.50",
        "currency": "EUR",
        "status": status,
    }
    values.update(kwargs)
    return SimulatedPayment(**values)
