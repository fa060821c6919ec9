"""The simulator against a fake ingress on 127.0.0.1: exact bytes, acks, provider retries."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from contracts.callbacks import RawRequest
from contracts.config import ProviderAccount, Settings
from ingress.providers import PROVIDERS
from ingress.providers.base import Rejected
from ingress.simulate_command import default_url, register
from ingress.simulator import is_ack, simulate_and_send
from payhook.config_files import load_config

from .helpers import ENV, RECEIVED_AT, account, payment


@dataclass
class FakeIngress:
    """Refuses the first ``failures`` requests with 503, then verifies and acks like ingress."""

    url: str = ""
    failures: int = 0
    override: tuple[int, bytes] | None = None  # always answer this instead
    attempts: int = 0
    accepted: list[Any] = field(default_factory=list)
    accounts: dict[str, ProviderAccount] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.override is not None:
            return web.Response(status=self.override[0], body=self.override[1])
        if self.attempts <= self.failures:
            return web.Response(status=503, text="try later")
        provider = request.match_info["provider"]
        module = PROVIDERS[provider]
        raw = RawRequest(
            method=request.method,
            path=request.path,
            query_string=request.raw_path.partition("?")[2],
            body=body,
            headers={
                h: request.headers[h] for h in module.relevant_headers if h in request.headers
            },
            # The simulator claims Paysepro's address; this fake trusts it like a proxy would.
            remote=request.headers.get("X-Forwarded-For", request.remote or ""),
        )
        try:
            accepted = module.verify(raw, self.accounts[provider], RECEIVED_AT)
        except Rejected as exc:
            return web.Response(status=exc.status, text=exc.reason)
        self.accepted.append(accepted.callback)
        ack = accepted.ack
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)


@pytest.fixture
async def fake() -> AsyncIterator[FakeIngress]:
    accounts = {name: account(name) for name in PROVIDERS}
    accounts["paypro"] = account("paypro", currency="EUR")
    state = FakeIngress(accounts=accounts)
    app = web.Application()
    app.router.add_route("*", "/callbacks/{provider}/{account}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def send(
    fake: FakeIngress, provider: str, *, retries: bool, **kwargs: Any
) -> tuple[int, str]:
    out = io.StringIO()
    code = await simulate_and_send(
        fake.accounts[provider],
        PROVIDERS[provider],
        payment(**kwargs),
        f"{fake.url}/callbacks/{provider}/main",
        retries=retries,
        time_scale=1e-6,
        out=out,
    )
    return code, out.getvalue()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_acknowledged_after_retries(fake: FakeIngress, provider: str) -> None:
    fake.failures = 2
    code, output = await send(fake, provider, retries=True, order_id="ORD/1 ä")
    assert code == 0
    assert fake.attempts == 3
    assert len(fake.accepted) == 1
    assert fake.accepted[0].order_id == "ORD/1 ä"
    assert output.count("< 503") == 2
    assert "# acknowledged" in output


async def test_without_retries_one_attempt(fake: FakeIngress) -> None:
    fake.failures = 10
    code, output = await send(fake, "paysera", retries=False)
    assert (code, fake.attempts) == (1, 1)
    assert "# never acknowledged" in output


@pytest.mark.parametrize(
    ("provider", "attempts"), [("paysera", 5), ("paypro", 9), ("paycore", 100)]
)
async def test_gives_up_after_the_schedule(fake: FakeIngress, provider: str, attempts: int) -> None:
    fake.failures = 1000
    code, _ = await send(fake, provider, retries=True)
    assert (code, fake.attempts) == (1, attempts)


async def test_paysera_wants_ok_but_paycore_any_200(fake: FakeIngress) -> None:
    fake.override = (200, b"FAIL something")
    code, _ = await send(fake, "paysera", retries=False)
    assert code == 1
    code, _ = await send(fake, "paycore", retries=False)
    assert code == 0


async def test_no_answer_is_not_an_ack(fake: FakeIngress) -> None:
    out = io.StringIO()
    code = await simulate_and_send(
        fake.accounts["paysera"],
        PROVIDERS["paysera"],
        payment(),
        "http://127.0.0.1:9/callbacks/paysera/main",  # discard port: nothing listens
        retries=False,
        time_scale=0,
        out=out,
    )
    assert code == 1
    assert "# no answer" in out.getvalue()


def test_is_ack() -> None:
    assert is_ack(None, 200, b"whatever")
    assert not is_ack(None, 204, b"")
    ok = PROVIDERS["paysera"].simulate(account("paysera"), payment()).expected_ack
    assert is_ack(ok, 200, b"OK\n")
    assert not is_ack(ok, 200, b"OK FAIL")
    assert not is_ack(ok, 503, b"OK")


# --- the command -------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Callable[[], Any]:
    path = tmp_path / "payhook.toml"
    path.write_text(
        '[providers.paysera.main]\nproject_id = "123456"\npassword = "env:PAYSERA_PASSWORD"\n'
        '[providers.paycore.main]\nlive_key = "env:PAYCORE_LIVE"\ntest_key = "env:PAYCORE_TEST"\n'
    )
    return lambda: load_config(path, environ=ENV)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="payhook")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_command_sends_to_the_configured_ingress(fake: FakeIngress, tmp_path: Path) -> None:
    port = int(fake.url.rsplit(":", 1)[1])
    settings = Settings(listen_host="0.0.0.0", listen_port=port)  # noqa: S104 - bind-all on purpose
    assert default_url(settings, "paycore", "main") == (
        f"http://127.0.0.1:{port}/callbacks/paycore/main"
    )
    args = parse(
        [
            "simulate",
            "paycore",
            "--account",
            "main",
            "--order",
            "O-9",
            "--amount",
            "3.33",
            "--currency",
            "USD",
            "--status",
            "refunded",
            "--test",
            "--set",
            "refunded_amount=3.33",
            "--retries",
            "--time-scale",
            "0",
        ]
    )
    assert await args.handler(args, settings, write_config(tmp_path)) == 0
    cb = fake.accepted[0]
    assert (cb.order_id, cb.amount, cb.refund_amount, cb.test) == ("O-9", 333, 333, True)


async def test_command_errors(tmp_path: Path) -> None:
    settings = Settings()
    loader = write_config(tmp_path)
    base = ["simulate", "paysera", "--order", "O", "--amount", "1", "--currency", "EUR"]
    args = parse([*base, "--account", "nope"])
    assert await args.handler(args, settings, loader) == 2
    args = parse([*base, "--account", "main", "--status", "exploded"])
    assert await args.handler(args, settings, loader) == 2
    args = parse([*base, "--account", "main", "--set", "novalue"])
    assert await args.handler(args, settings, loader) == 2
    args = parse(["simulate", "paysera", "--account", "main", "--order", "O", "--amount", "1.001",
                  "--currency", "EUR"])  # fmt: skip
    assert await args.handler(args, settings, loader) == 2
