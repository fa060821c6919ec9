"""Prometheus metrics: every role counts what it did, with bounded labels, on the health port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from runtime.health import Health
from tests.e2e.harness import Merchant, running_system, system_settings
from tests.e2e.test_paysera_e2e import make_config, paysera_query, rsa_key

from .peers import PayhookProcess, get_status, wait_status
from .test_process import Stage, stage

__all__ = ["rsa_key", "stage"]  # fixtures


CID = "corr-follow-me-1"
_EVENTS = ("ingress.callback_accepted", "ledger.batch_applied", "webhooks.attempted")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(check: object, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110 - counters, no event
            await asyncio.sleep(0.05)


async def test_a_callback_moves_every_roles_metrics(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    accepted = dict(provider="paysera", account="main", outcome="accepted", reason="")
    bad_signature = dict(
        provider="paysera", account="main", outcome="rejected", reason="bad signature"
    )
    unknown = dict(
        provider="unknown", account="unknown", outcome="rejected", reason="unknown provider account"
    )
    before = {
        "accepted": sample("payhook_ingress_callbacks_total", **accepted),
        "bad": sample("payhook_ingress_callbacks_total", **bad_signature),
        "unknown": sample("payhook_ingress_callbacks_total", **unknown),
        "acks": sample("payhook_ingress_ack_seconds_count", provider="paysera"),
        "applied": sample("payhook_ledger_callbacks_total", outcome="applied"),
        "lag": sample("payhook_ledger_lag_seconds_count"),
        "published": sample("payhook_ledger_events_published_total"),
        "2xx": sample("payhook_webhook_attempts_total", merchant="shop", outcome="2xx"),
        "5xx": sample("payhook_webhook_attempts_total", merchant="shop", outcome="5xx"),
        "delivered": sample("payhook_webhook_delivery_seconds_count", merchant="shop"),
    }
    merchant = Merchant(respond=lambda n: 500 if n == 1 else 200)  # fails once, then 200
    async with merchant.serving():
        config = make_config(tmp_path, rsa_key, merchant.url)
        settings = system_settings(database_url, amqp_url, namespace)
        async with (
            running_system(settings, config, health=Health()) as base,
            aiohttp.ClientSession() as http,
        ):
            good = paysera_query(rsa_key, requestid="7001")
            async with http.post(
                f"{base}/callbacks/paysera/main", data=good, headers={"X-Request-Id": CID}
            ) as resp:
                assert resp.status == 200
            other = paysera_query(rsa_key, requestid="7002")
            forged = {**other, "data": good["data"]}  # another callback's signatures
            async with http.post(f"{base}/callbacks/paysera/main", data=forged) as resp:
                assert resp.status == 401
            async with http.post(f"{base}/callbacks/nosuch/x{namespace}", data=good) as resp:
                assert resp.status == 404
            await merchant.wait_for(2, patience=30)  # the failure, then the retry after 1 s
            await eventually(
                lambda: (
                    sample("payhook_webhook_delivery_seconds_count", merchant="shop")
                    > before["delivered"]
                )
            )

    assert sample("payhook_ingress_callbacks_total", **accepted) == before["accepted"] + 1
    assert sample("payhook_ingress_callbacks_total", **bad_signature) == before["bad"] + 1
    assert sample("payhook_ingress_callbacks_total", **unknown) == before["unknown"] + 1
    assert sample("payhook_ingress_ack_seconds_count", provider="paysera") == before["acks"] + 1
    assert sample("payhook_ledger_callbacks_total", outcome="applied") == before["applied"] + 1
    assert sample("payhook_ledger_lag_seconds_count") >= before["lag"] + 1
    # Published by the ledger right after its commit (the relay only sweeps what it leaves).
    assert sample("payhook_ledger_events_published_total") >= before["published"] + 1
    assert sample("payhook_webhook_attempts_total", merchant="shop", outcome="5xx") == (
        before["5xx"] + 1
    )
    assert sample("payhook_webhook_attempts_total", merchant="shop", outcome="2xx") == (
        before["2xx"] + 1
    )
    # One correlation id follows the callback through the logs: ingress, ledger batch, webhook.
    lines = [line for line in capsys.readouterr().out.splitlines() if CID in line]
    events = {name for line in lines for name in _EVENTS if name in line}
    assert events == set(_EVENTS), lines
    # No label carries an id: every label value is one of a small, fixed vocabulary.
    for metric in REGISTRY.collect():
        for s in metric.samples:
            for value in s.labels.values():
                assert namespace not in value
                assert "7001" not in value


async def test_the_health_port_serves_metrics_unless_turned_off(stage: Stage) -> None:
    await stage.database.up()
    await stage.broker.up()
    for enabled in ("true", "false"):
        process = PayhookProcess(["relay"], {**stage.env, "PAYHOOK_METRICS": enabled})
        await process.start()
        try:
            await wait_status(f"{stage.health}/readyz", 200, process)
            status, body = await get_status(f"{stage.health}/metrics")
            if enabled == "true":
                assert status == 200
                assert "# TYPE payhook_relay_events_published_total counter" in body
                assert "payhook_relay_outbox_pending " in body
            else:
                assert status == 404
        finally:
            code, _ = await process.stop(within=20)
        assert code == 0
