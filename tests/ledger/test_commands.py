"""``payhook payments show`` and ``payhook ledger balances|check|replay-dead`` handlers."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
import orjson
import pytest

from contracts.config import Config, Settings
from contracts.statuses import Status
from workers.ledger.apply import Incoming, Policy, apply_batch
from workers.ledger.commands import register

from .factory import callback

S = Status


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="payhook")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def _run(settings: Settings, config: Config, *argv: str) -> int:
    args = _parse(*argv)
    status: int = await args.handler(args, settings, lambda: config)
    return status


@pytest.fixture
async def ledger(pool: asyncpg.Pool[Any], policy: Policy) -> None:
    async with pool.acquire() as conn:
        await apply_batch(
            conn,
            [
                Incoming.of(cb, "corr-9")
                for cb in (
                    callback(S.PENDING, "cpi_1", provider="paycore", fee_amount=5),
                    callback(S.SUCCEEDED, "cpi_1", provider="paycore", fee_amount=30),
                    callback(
                        S.PARTIALLY_REFUNDED,
                        "cpi_1",
                        provider="paycore",
                        refund_amount=250,
                        variant="r1",
                    ),
                    callback(S.PENDING, "cpi_1", provider="paycore", provider_status="late"),
                )
            ],
            policy,
        )


async def test_payments_show(
    ledger: None, settings: Settings, ledger_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _run(settings, ledger_config, "payments", "show", "paycore", "cpi_1") == 0
    out = capsys.readouterr().out
    assert "state      partially_refunded" in out
    assert "paid       12.50 EUR   refunded 2.50 EUR   fee 0.30 EUR" in out
    assert "stale" in out
    assert "Cr merchant_balance:shop" in out
    assert "corr corr-9" in out

    assert (
        await _run(settings, ledger_config, "payments", "show", "paycore", "cpi_1", "--json") == 0
    )
    (payment,) = orjson.loads(capsys.readouterr().out)
    assert [h["outcome"] for h in payment["history"]] == ["applied", "applied", "applied", "stale"]
    assert await _run(settings, ledger_config, "payments", "show", "paycore", "nope") == 1


async def test_ledger_balances(
    ledger: None, settings: Settings, ledger_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _run(settings, ledger_config, "ledger", "balances") == 0
    out = capsys.readouterr().out
    assert "merchant_balance:shop" in out
    assert "provider_fees:paycore" in out
    assert (
        await _run(settings, ledger_config, "ledger", "balances", "--merchant", "shop", "--json")
        == 0
    )
    rows = orjson.loads(capsys.readouterr().out)
    assert rows == [
        {
            "account": "merchant_balance:shop",
            "currency": "EUR",
            "balance": -(1250 - 250) + 30,
            "postings": 3,
        }
    ]


async def test_ledger_check_passes_then_fails_on_a_breach(
    ledger: None,
    pool: asyncpg.Pool[Any],
    settings: Settings,
    ledger_config: Config,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await _run(settings, ledger_config, "ledger", "check") == 0
    assert "ledger check: ok" in capsys.readouterr().out
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE payments SET state = 'failed', paid = 0, refund_sum = 0, refunded = 0, fee = 0"
        )
    assert await _run(settings, ledger_config, "ledger", "check", "--json") == 1
    report = orjson.loads(capsys.readouterr().out)
    assert not report["ok"]
    assert any("postings" in b for b in report["breaches"])
    assert any("last callback" in b for b in report["breaches"])


async def test_replay_dead_with_nothing_dead(
    settings: Settings, ledger_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _run(settings, ledger_config, "ledger", "replay-dead") == 0
    assert "replayed 0 message(s)" in capsys.readouterr().out
