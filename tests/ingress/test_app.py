"""Through the real ingress (aiohttp app, real broker): client address behind a proxy, amounts
the ledger cannot hold, and callbacks the codec cannot write."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from contracts.callbacks import RawRequest
from contracts.config import Config, ProviderAccount, parse_config
from ingress.app import create_app
from ingress.providers.base import Accepted, SimulatedPayment, SimulatedRequest
from ingress.providers.paycore import PAYCORE
from ingress.providers.paysepro import DEFAULT_SOURCE
from tests.e2e.harness import running_system, system_settings
from tests.providers import signed
from tests.providers.helpers import DEFAULT_TABLES, ENV
from tests.providers.signed import Signed, as_json

# Long enough that an answer which waited for it is obviously not "at once".
PUBLISH_TIMEOUT_S = 10.0
PROXY = "127.0.0.1"  # the test's client stands in for a reverse proxy in front of the ingress


def make_config(tmp_path: Path, providers: tuple[str, ...] = tuple(DEFAULT_TABLES)) -> Config:
    data: dict[str, Any] = {
        "ingress": {"trusted_proxies": [f"{PROXY}/32"]},
        "providers": {name: {"main": dict(DEFAULT_TABLES[name])} for name in providers},
    }
    return parse_config(data, base_dir=tmp_path, environ=ENV)


async def send(
    http: aiohttp.ClientSession,
    base: str,
    request: Signed,
    forwarded_for: tuple[str, ...] = (),
) -> tuple[int, str, float]:
    """Send ``request`` as its provider would: (status, body, seconds it took)."""
    headers = CIMultiDict(request.headers)
    for line in forwarded_for:
        headers.add("X-Forwarded-For", line)  # one header line each
    url = f"{base}/callbacks/{request.provider}/main" + (f"?{request.query}" * bool(request.query))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.request(
        request.method, yarl.URL(url, encoded=True), data=request.body or None, headers=headers
    ) as response:
        return response.status, await response.text(), loop.time() - started


@pytest.fixture
async def ingress(
    database_url: str, amqp_url: str, namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """The ingress role exactly as ``payhook run`` starts it, and a client session."""
    settings = system_settings(
        database_url, amqp_url, namespace, publish_timeout_s=PUBLISH_TIMEOUT_S
    )
    async with (
        running_system(settings, make_config(tmp_path), roles=("ingress",)) as base,
        aiohttp.ClientSession() as http,
    ):
        yield http, base


# --- X-Forwarded-For ---------------------------------------------------------------------------


async def test_a_spoofed_first_forwarded_line_does_not_pass_paysepros_allow_list(
    ingress: tuple[aiohttp.ClientSession, str],
) -> None:
    """The client writes ``X-Forwarded-For: <Paysepro>`` itself; the (trusted) proxy adds its own
    line with the address it really got the request from. Only that one counts."""
    http, base = ingress
    notification = dataclasses.replace(signed.paysepro(code="SPOOF-1"), remote="")
    with capture_logs() as logs:
        status, body, _ = await send(http, base, notification, (DEFAULT_SOURCE, "203.0.113.7"))
    assert (status, body) == (403, "source address not allowed\n")
    [refusal] = [e for e in logs if e["event"] == "ingress.callback_rejected"]
    assert refusal["remote"] == "203.0.113.7"
    # The same request really coming through the proxy from Paysepro is taken.
    status, body, _ = await send(http, base, notification, (DEFAULT_SOURCE,))
    assert (status, body) == (200, "OK")


async def test_forwarded_lines_are_read_as_one_list(
    ingress: tuple[aiohttp.ClientSession, str],
) -> None:
    """Paysepro → proxy 127.0.0.1 → a second proxy line: the walk goes through both lines."""
    http, base = ingress
    notification = signed.paysepro(code="LINES-1")
    lines = ("198.51.100.9", f"{DEFAULT_SOURCE}, {PROXY}")
    status, body, _ = await send(http, base, notification, lines)
    assert (status, body) == (200, "OK")


# --- amounts the ledger cannot hold -------------------------------------------------------------

TOO_LARGE = [
    (signed.paysera(amount="9223372036854775808"), "amount out of range"),
    (signed.paygol_v2(b"123456789012345678901234567890"), "price out of range"),
    (signed.paygol_legacy(price="92233720368547758.08"), "price out of range"),
    (signed.paycore(amount=b"123456789012345678901234567890"), "amount out of range"),
    (signed.paycore(amount=b"1e400"), "amount out of range"),
    (signed.paypro(as_json("92233720368547758.08")), "amount out of range"),
    (signed.paysepro(price="92233720368547758.08"), "price out of range"),
    (signed.paycore(amount=b"-4.00"), "amount must be positive"),
]


@pytest.mark.parametrize(("request_", "reason"), TOO_LARGE, ids=[r.provider for r, _ in TOO_LARGE])
async def test_unusable_amounts_are_refused_at_once(
    ingress: tuple[aiohttp.ClientSession, str], request_: Signed, reason: str
) -> None:
    """Before: accepted by the module, then the encoder failed in the publish task, the
    request waited out the publish timeout for a 503 (so the provider resent for ever), and the
    task's exception was never retrieved (the autouse ``loop_errors`` fixture checks that)."""
    http, base = ingress
    forwarded = (DEFAULT_SOURCE,) if request_.provider == "paysepro" else ()
    with capture_logs() as logs:
        status, body, took = await send(http, base, request_, forwarded)
    assert (status, body) == (400, reason + "\n")
    assert took < PUBLISH_TIMEOUT_S / 2
    [refusal] = [e for e in logs if e["event"] == "ingress.callback_rejected"]
    assert (refusal["http_status"], refusal["reason"]) == (400, reason)


# --- a callback the codec cannot write (a module bug) ------------------------------------------


@dataclasses.dataclass(frozen=True)
class LeakyPayCore:
    """PayCore's module with a validation bug: it lets a >64-bit amount through."""

    name: str = "paycore"
    relevant_headers: tuple[str, ...] = PAYCORE.relevant_headers

    def check_account(self, account: ProviderAccount) -> None:
        PAYCORE.check_account(account)

    def verify(self, request: RawRequest, account: ProviderAccount, received_at: str) -> Accepted:
        accepted = PAYCORE.verify(request, account, received_at)
        if accepted.callback.order_id == "LEAK":
            leaked = dataclasses.replace(accepted.callback, amount=2**64)
            return dataclasses.replace(accepted, callback=leaked)
        return accepted

    def simulate(self, account: ProviderAccount, payment: SimulatedPayment) -> SimulatedRequest:
        return PAYCORE.simulate(account, payment)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a port of its own (bound as port 0: no race), once ``/readyz`` says ready."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, PROXY, 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)  # polling readiness, not waiting for an outcome
        yield base
    finally:
        await runner.cleanup()


def leaked_invoice(order_id: str, transaction_id: str) -> Signed:
    body = signed.paycore().body
    body = body.replace(b'"ORD-3"', b'"' + order_id.encode() + b'"')
    body = body.replace(b'"cpi_AMOUNT1"', b'"' + transaction_id.encode() + b'"')
    return signed.paycore_body(body)


async def test_an_unencodable_callback_is_a_500_at_once_and_its_neighbours_are_acked(
    database_url: str, amqp_url: str, namespace: str, tmp_path: Path
) -> None:
    settings = system_settings(
        database_url, amqp_url, namespace, publish_timeout_s=PUBLISH_TIMEOUT_S
    )
    providers: Mapping[str, Any] = {"paycore": LeakyPayCore()}
    app = create_app(settings, make_config(tmp_path, ("paycore",)), providers=providers)
    async with serving(app) as base, aiohttp.ClientSession() as http:
        leak = leaked_invoice("LEAK", "cpi_LEAK")
        neighbours = [leaked_invoice(f"ORD-{n}", f"cpi_OK{n}") for n in range(5)]
        with capture_logs() as logs:
            answers = await asyncio.gather(*(send(http, base, r) for r in [leak, *neighbours]))
    (status, body, took), *rest = answers
    assert (status, body) == (500, "internal error\n")  # the provider resends after the fix
    assert took < PUBLISH_TIMEOUT_S / 2
    assert [(s, b) for s, b, _ in rest] == [(200, "OK")] * len(neighbours)
    [line] = [e for e in logs if e["event"] == "ingress.callback_unencodable"]
    assert line["log_level"] == "error"
    assert line["error_type"] == "TypeError"
    assert "64-bit" in line["error"]
    assert not [e for e in logs if e["event"] == "ingress.publish_failed"]
    accepted = {e["transaction_id"] for e in logs if e["event"] == "ingress.callback_accepted"}
    assert accepted == {f"cpi_OK{n}" for n in range(5)}
