"""Order expectations: matching, every kind of mismatch, Paysepro, and the admin listener."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer

from contracts.config import Config, Settings
from contracts.schema import event_schema
from contracts.statuses import Status, VerifiedBy
from runtime.health import Health
from tests.ports import free_port, refused_port
from tests.roles import role_context
from workers.ledger.admin import build_admin_app, run_admin
from workers.ledger.apply import Incoming, Policy, apply_batch, apply_with_retry
from workers.ledger.check import check_ledger
from workers.ledger.expectations import (
    Expectation,
    InvalidExpectation,
    parse_expectation,
    register_expectation,
)
from workers.ledger.orders import register_order, released_variant

from .factory import ADMIN_TOKEN, callback, config_dict, make_config

S = Status
EXP = Expectation("shop", "paysera", "main", "ORD-1", 1250, "EUR", False)


async def _apply(conn: Any, policy: Policy, *callbacks: Any) -> None:
    await apply_batch(conn, [Incoming.of(cb) for cb in callbacks], policy)


async def _outcome(conn: Any) -> tuple[str, str | None, int, str | None]:
    row = await conn.fetchrow("SELECT outcome, reason FROM callbacks ORDER BY seq DESC LIMIT 1")
    postings = await conn.fetchval("SELECT count(*) FROM postings")
    attention = await conn.fetchval("SELECT attention FROM payments LIMIT 1")
    return row["outcome"], row["reason"], postings, attention


async def test_matching_expectation_moves_money(pool: asyncpg.Pool[Any], policy: Policy) -> None:
    async with pool.acquire() as conn:
        assert await register_expectation(conn, EXP) == "created"
        await _apply(conn, policy, callback(S.SUCCEEDED))
        assert await _outcome(conn) == ("applied", None, 2, None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 1300}, "amount"),
        ({"currency": "USD"}, "currency"),
        ({"test": True}, "test"),
        ({"paid_amount": 1000}, "paid_amount"),  # "succeeded" for less than the order
    ],
)
async def test_mismatch_is_recorded_emitted_and_moves_nothing(
    pool: asyncpg.Pool[Any], policy: Policy, change: dict[str, Any], field: str
) -> None:
    async with pool.acquire() as conn:
        await register_expectation(conn, EXP)
        await _apply(conn, policy, callback(S.SUCCEEDED, **change))
        outcome, reason, postings, attention = await _outcome(conn)
        assert (outcome, postings) == ("amount_mismatch", 0)
        assert reason is not None
        assert field in reason
        assert attention is not None
        assert attention.startswith("amount_mismatch")
        event = await conn.fetchrow("SELECT type, routing_key, body FROM events")
        assert event["type"] == "payhook.payment.amount_mismatch"
        assert event["routing_key"] == "payment.amount_mismatch.paysera"
        jsonschema.validate(event["body"], event_schema(event["type"]))
        assert event["body"]["data"]["ledger"]["reason"] == f"mismatch:{field}"
        assert event["body"]["data"]["ledger"]["expected"]["amount"] == 1250
        assert (await check_ledger(conn)).ok


async def test_paysepro_needs_an_expectation_by_default(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await _apply(
            conn,
            policy,
            callback(S.PENDING, "A", provider="paysepro"),
            callback(S.SUCCEEDED, "A", provider="paysepro"),
        )
        outcome, reason, postings, _ = await _outcome(conn)
        assert (outcome, reason, postings) == (
            "no_expectation",
            "no order expectation registered",
            0,
        )
        state = await conn.fetchval("SELECT state FROM payments")
        assert state == "pending"  # pending moved it; the unproven success did not
        event = await conn.fetchrow(
            "SELECT type, body FROM events WHERE type LIKE '%amount_mismatch'"
        )
        assert event["body"]["data"]["ledger"]["reason"] == "no_expectation"
        assert event["body"]["data"]["ledger"]["payment_status"] == "pending"

        exp = Expectation("shop", "paysepro", "main", "ORD-2", 1250, "EUR", False)
        await register_expectation(conn, exp)
        await _apply(
            conn, policy, callback(S.SUCCEEDED, "B", provider="paysepro", order_id="ORD-2")
        )
        assert (await _outcome(conn))[:3] == ("applied", None, 2)


async def _money(conn: Any) -> tuple[str, int, int]:
    state = await conn.fetchval("SELECT state FROM payments")
    entries = await conn.fetchval("SELECT count(*) FROM journal_entries")
    postings = await conn.fetchval("SELECT count(*) FROM postings")
    return state, entries, postings


async def test_a_late_expectation_releases_the_held_payment_once(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    """Paysepro acked the callback and will not send it again: registering the order after
    it arrived must credit the payment, once, however often the registration is repeated."""
    held = callback(S.SUCCEEDED, "A", provider="paysepro")
    async with pool.acquire() as conn:
        await _apply(conn, policy, callback(S.PENDING, "A", provider="paysepro"), held)
        assert await _money(conn) == ("pending", 0, 0)
        attention = await conn.fetchval("SELECT attention FROM payments")
        assert attention == "no_expectation: no order expectation registered"
        assert (await check_ledger(conn)).counts["attention"] == 1
    exp = Expectation("shop", "paysepro", "main", "ORD-1", 1250, "EUR", False)
    result, released = await register_order(pool, exp, policy)
    assert (result, released.recorded, dict(released.outcomes)) == ("created", 1, {"applied": 1})
    for _ in range(2):  # repeated (or redelivered) registrations decide nothing again
        result, released = await register_order(pool, exp, policy)
        assert (result, released.recorded) == ("unchanged", 0)
    async with pool.acquire() as conn:
        await _apply(conn, policy, held)  # the provider's copy, redelivered: a duplicate
        assert await _money(conn) == ("succeeded", 1, 2)
        history = await conn.fetch("SELECT outcome, variant FROM callbacks ORDER BY seq")
        assert [h["outcome"] for h in history] == ["applied", "no_expectation", "applied"]
        assert history[2]["variant"] == released_variant(held, exp)
        succeeded = await conn.fetch(
            "SELECT body FROM events WHERE type = 'payhook.payment.succeeded'"
        )
        assert len(succeeded) == 1
        assert succeeded[0]["body"]["subject"] == "A"
        # The hold is resolved: operators are no longer asked to look at this payment.
        assert await conn.fetchval("SELECT attention FROM payments") is None
        report = await check_ledger(conn)
        assert report.ok
        assert report.counts["attention"] == 0


async def test_a_corrected_expectation_releases_a_mismatch_and_then_locks(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await register_expectation(conn, replace(EXP, amount=1300))
        await _apply(conn, policy, callback(S.SUCCEEDED))
        assert await _money(conn) == ("new", 0, 0)
    # Corrected to other wrong terms: decided again, still held, no money.
    result, released = await register_order(pool, replace(EXP, amount=1400), policy)
    assert (result, dict(released.outcomes)) == ("updated", {"amount_mismatch": 1})
    # Corrected to the right terms: the payment is credited once.
    result, released = await register_order(pool, EXP, policy)
    assert (result, dict(released.outcomes)) == ("updated", {"applied": 1})
    # Money moved under these terms: they can no longer change.
    result, released = await register_order(pool, replace(EXP, amount=1300), policy)
    assert (result, released.recorded) == ("conflict", 0)
    async with pool.acquire() as conn:
        assert await _money(conn) == ("succeeded", 1, 2)
        outcomes = await conn.fetch("SELECT outcome FROM callbacks ORDER BY seq")
        assert [o["outcome"] for o in outcomes] == ["amount_mismatch", "amount_mismatch", "applied"]
        assert (await check_ledger(conn)).ok


async def test_a_callback_is_released_under_the_order_it_names_not_its_payments(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    """The payment was first heard of without an order id; the callback that names the order
    is held (it disagrees with the registered terms), so the payment's row never learns the
    order. Correcting the order's terms must still find and release that callback."""
    async with pool.acquire() as conn:
        await register_expectation(conn, replace(EXP, amount=1300))
        await _apply(conn, policy, callback(S.PENDING, order_id=None))
        await _apply(conn, policy, callback(S.SUCCEEDED))  # names ORD-1, 1250 ≠ 1300: held
        assert await _money(conn) == ("pending", 0, 0)
        assert await conn.fetchval("SELECT order_id FROM payments") is None
    result, released = await register_order(pool, EXP, policy)
    assert (result, dict(released.outcomes)) == ("updated", {"applied": 1})
    async with pool.acquire() as conn:
        assert await _money(conn) == ("succeeded", 1, 2)
        assert await conn.fetchval("SELECT order_id FROM payments") == "ORD-1"
        assert (await check_ledger(conn)).ok


async def _until_done_or_blocked(task: asyncio.Task[Any], conn: Any, within: float = 10.0) -> None:
    """Until ``task`` finished, or another session waits for an advisory lock (an order's)."""
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    async with asyncio.timeout(within):
        while not task.done() and not await conn.fetchval(waiting):  # noqa: ASYNC110 - pg_locks
            await asyncio.sleep(0.01)


async def test_a_registration_racing_a_hold_still_releases_it(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    """The ledger decided a Paysepro success "no expectation" and has not committed yet when
    the order is registered: the registration must release it once it is committed, not
    look for held callbacks too early and leave it held for good (found by tests/chaos)."""
    held = callback(S.SUCCEEDED, "A", provider="paysepro")
    exp = Expectation("shop", "paysepro", "main", "ORD-1", 1250, "EUR", False)
    async with pool.acquire() as ledger, pool.acquire() as observer:
        transaction = ledger.transaction()
        await transaction.start()
        await apply_batch(ledger, [Incoming.of(held)], policy)  # decided; commit pending
        registering = asyncio.create_task(register_order(pool, exp, policy))
        await _until_done_or_blocked(registering, observer)
        await transaction.commit()
    result, released = await registering
    assert (result, dict(released.outcomes)) == ("created", {"applied": 1})
    async with pool.acquire() as conn:
        assert await _money(conn) == ("succeeded", 1, 2)
        assert (await check_ledger(conn)).ok


async def test_a_hold_racing_a_registration_is_decided_under_it(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    """The other order of the same race: the registration is committing while the ledger
    decides the callback; the ledger must apply it under the expectation, not hold it."""
    exp = Expectation("shop", "paysepro", "main", "ORD-1", 1250, "EUR", False)
    items = [Incoming.of(callback(S.SUCCEEDED, "A", provider="paysepro"))]
    async with pool.acquire() as admin, pool.acquire() as observer:
        transaction = admin.transaction()
        await transaction.start()
        assert await register_expectation(admin, exp) == "created"  # commit pending
        applying = asyncio.create_task(apply_with_retry(pool, items, policy))
        await _until_done_or_blocked(applying, observer)
        await transaction.commit()
    result = await applying
    assert dict(result.outcomes) == {"applied": 1}
    async with pool.acquire() as conn:
        assert await _money(conn) == ("succeeded", 1, 2)


async def test_trust_and_require_options(pool: asyncpg.Pool[Any]) -> None:
    data = config_dict(trust_source_address_without_expectation=True)
    data["providers"]["paysera"]["main"]["require_expectation"] = True
    policy = Policy.from_config(make_config(data))
    async with pool.acquire() as conn:
        await _apply(conn, policy, callback(S.SUCCEEDED, "A", provider="paysepro"))
        assert (await _outcome(conn))[:3] == ("applied", None, 2)
        await _apply(conn, policy, callback(S.SUCCEEDED, "B", provider="paysera"))
        assert (await _outcome(conn))[0] == "no_expectation"
    assert policy.require_expectation(callback(S.SUCCEEDED, verified_by=VerifiedBy.SIGNATURE))


def test_parse_expectation_validates_against_the_config() -> None:
    config = make_config()
    good = {
        "merchant": "shop",
        "provider": "paysera",
        "account": "main",
        "order_id": "O",
        "amount_major": "12.50",
        "currency": "EUR",
    }
    assert parse_expectation(good, config).amount == 1250
    for bad in (
        {**good, "merchant": "other"},
        {**good, "account": "nope"},
        {**good, "currency": "XXX"},
        {**good, "amount_major": "12.505"},
        {**{k: v for k, v in good.items() if k != "amount_major"}, "amount": 12.5},
        {**{k: v for k, v in good.items() if k != "amount_major"}, "amount": 0},
        {**good, "test": "yes"},
        {**good, "order_id": ""},
        [],
    ):
        with pytest.raises(InvalidExpectation):
            parse_expectation(bad, config)


async def test_admin_orders_and_payments(
    pool: asyncpg.Pool[Any], ledger_config: Config, policy: Policy
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    order = {
        "merchant": "shop",
        "provider": "paysera",
        "account": "main",
        "order_id": "ORD-1",
        "amount": 1250,
        "currency": "EUR",
    }
    async with TestClient(TestServer(build_admin_app(pool, ledger_config))) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.post("/orders", json=order)).status == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/orders", json=order, headers=wrong)).status == 401
        response = await client.post("/orders", json=order, headers=auth)
        assert response.status == 201
        assert (await response.json())["result"] == "created"
        response = await client.post("/orders", json=order, headers=auth)
        assert (await response.json())["result"] == "unchanged"
        response = await client.post("/orders", json={**order, "amount": 1300}, headers=auth)
        assert (await response.json())["result"] == "updated"
        bad = await client.post("/orders", json={**order, "currency": "EURO"}, headers=auth)
        assert bad.status == 400
        assert (await client.post("/orders", data=b"{", headers=auth)).status == 400

        async with pool.acquire() as conn:
            await _apply(conn, policy, callback(S.SUCCEEDED, amount=1300))
        # Money moved under these terms: they can no longer change.
        response = await client.post("/orders", json=order, headers=auth)
        assert response.status == 409

        response = await client.get("/payments/paysera/T1", headers=auth)
        assert response.status == 200
        (payment,) = (await response.json())["payments"]
        assert payment["state"] == "succeeded"
        assert payment["expectation"]["amount"] == 1300
        assert [h["outcome"] for h in payment["history"]] == ["applied"]
        assert len(payment["postings"]) == 2
        assert (await client.get("/payments/paysera/T1")).status == 401
        assert (await client.get("/payments/paysera/none", headers=auth)).status == 404


async def test_run_admin_listens_and_stops(
    database_url: str, db: Any, ledger_config: Config
) -> None:
    port = free_port()
    settings = Settings(database_url=database_url, admin_port=port)
    stop = asyncio.Event()
    task = asyncio.create_task(run_admin(role_context("admin", settings, ledger_config, stop)))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("admin listener never answered")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_run_admin_is_not_ready_before_postgres_answers(ledger_config: Config) -> None:
    """Seen while building tests/chaos: /readyz of a starting ``payhook admin`` answered 200
    ``{"ready":true,"dependencies":{}}`` with Postgres unreachable, because the role named
    its dependency only after the listener had started."""
    with refused_port() as nothing:  # refuses connections while it is held
        settings = Settings(
            database_url=f"postgresql://postgres@127.0.0.1:{nothing}/x", admin_port=0
        )
        stop = asyncio.Event()
        health = Health()
        task = asyncio.create_task(
            run_admin(role_context("admin", settings, ledger_config, stop, health))
        )
        try:
            await asyncio.sleep(0)  # the role's first step, up to its first await
            assert not health.ready
            assert "admin.postgres" in health.dependencies
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


def test_ledger_options_must_be_booleans() -> None:
    from contracts.errors import ConfigError

    with pytest.raises(ConfigError, match="trust_source_address"):
        Policy.from_config(make_config(config_dict(trust_source_address_without_expectation=1)))
    data = config_dict()
    data["providers"]["paysepro"]["main"]["require_expectation"] = "yes"
    with pytest.raises(ConfigError, match="require_expectation"):
        Policy.from_config(make_config(data))
