"""``apply_batch`` against real Postgres: postings, dedupe, database-enforced invariants."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import jsonschema
import pytest

from contracts.schema import event_schema
from contracts.statuses import Kind, Status
from workers.ledger.apply import Incoming, Policy, apply_batch, apply_each, apply_with_retry
from workers.ledger.check import check_ledger

from .factory import callback
from .harness import ledger_balances, ledger_states
from .model import Model

S = Status


def items(*callbacks: Any) -> list[Incoming]:
    return [Incoming.of(cb, correlation_id=f"corr-{n}") for n, cb in enumerate(callbacks)]


async def test_success_posts_once_and_emits_valid_events(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    batch = items(callback(S.PENDING), callback(S.SUCCEEDED), callback(S.SUCCEEDED))
    async with pool.acquire() as conn:
        first = await apply_batch(conn, batch, policy)
        again = await apply_batch(conn, batch, policy)  # a full redelivery
        assert (first.recorded, first.duplicates, first.events) == (2, 1, 2)
        assert (again.recorded, again.duplicates, again.events) == (0, 3, 0)
        assert await ledger_states(conn) == {
            ("paysera", "main", "T1"): {"state": "succeeded", "paid": 1250, "refunded": 0, "fee": 0}
        }
        assert await ledger_balances(conn) == {
            ("provider_clearing:paysera:main", "EUR"): 1250,
            ("merchant_balance:shop", "EUR"): -1250,
        }
        events = await conn.fetch(
            "SELECT type, routing_key, merchant, correlation_id, body FROM events ORDER BY seq"
        )
        assert [e["routing_key"] for e in events] == [
            "payment.pending.paysera",
            "payment.succeeded.paysera",
        ]
        for event in events:
            jsonschema.validate(event["body"], event_schema(event["type"]))
            assert event["merchant"] == "shop"
        assert events[1]["body"]["data"]["ledger"]["payment_status"] == "succeeded"
        assert events[1]["correlation_id"] == "corr-1"
        history = await conn.fetch(
            "SELECT outcome, correlation_id, body FROM callbacks ORDER BY seq"
        )
        assert [h["outcome"] for h in history] == ["applied", "applied"]
        assert history[0]["body"]["raw"]["path"] == "/callbacks/paysera/main"
        assert (await check_ledger(conn)).ok


async def test_late_pending_and_info_change_nothing(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await apply_batch(conn, items(callback(S.SUCCEEDED)), policy)
        result = await apply_batch(conn, items(callback(S.PENDING), callback(S.INFO)), policy)
        assert result.outcomes == {"stale": 1, "info": 1}
        assert result.events == 1  # the info event; the stale pending is history only
        states = await ledger_states(conn)
        assert states[("paysera", "main", "T1")]["state"] == "succeeded"
        assert await conn.fetchval("SELECT count(*) FROM callbacks") == 3


async def test_unrecognized_is_recorded_and_emitted_without_money(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await apply_batch(conn, items(callback(S.UNRECOGNIZED, provider_status="77")), policy)
        event = await conn.fetchrow("SELECT type, body FROM events")
        assert event["type"] == "payhook.payment.unrecognized"
        jsonschema.validate(event["body"], event_schema(event["type"]))
        assert await conn.fetchval("SELECT count(*) FROM postings") == 0
        assert (await check_ledger(conn)).ok


async def test_paycore_fees_refunds_and_payouts(pool: asyncpg.Pool[Any], policy: Policy) -> None:
    pc = {"provider": "paycore", "currency": "USD", "amount": 2200}
    async with pool.acquire() as conn:
        await apply_batch(
            conn,
            items(
                callback(S.PARTIALLY_PAID, "cpi_1", paid_amount=1000, fee_amount=66, **pc),
                callback(S.SUCCEEDED, "cpi_1", fee_amount=66, **pc),
                callback(S.PARTIALLY_REFUNDED, "cpi_1", refund_amount=500, variant="r1", **pc),
                callback(S.SUCCEEDED, "cpoi_1", kind=Kind.PAYOUT, **pc),
                callback(S.REFUNDED, "cpoi_1", kind=Kind.PAYOUT, **pc),  # not a payout state
            ),
            policy,
        )
        states = await ledger_states(conn)
        assert states[("paycore", "main", "cpi_1")] == {
            "state": "partially_refunded",
            "paid": 2200,
            "refunded": 500,
            "fee": 66,
        }
        assert states[("paycore", "main", "cpoi_1")]["state"] == "succeeded"
        assert await ledger_balances(conn) == {
            ("provider_clearing:paycore:main", "USD"): 2200 - 500 - 2200,
            ("merchant_balance:shop", "USD"): -(2200 - 500) + 66 + 2200,
            ("provider_fees:paycore", "USD"): -66,
        }
        attention = await conn.fetchval(
            "SELECT attention FROM payments WHERE transaction_id = 'cpoi_1'"
        )
        assert attention.startswith("conflict")
        assert (await check_ledger(conn)).ok


async def test_test_mode_money_lives_in_test_accounts(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await apply_batch(conn, items(callback(S.SUCCEEDED, test=True)), policy)
        assert set(await ledger_balances(conn)) == {
            ("test:provider_clearing:paysera:main", "EUR"),
            ("test:merchant_balance:shop", "EUR"),
        }


async def test_the_database_refuses_unbalanced_or_edited_postings(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await apply_batch(conn, items(callback(S.SUCCEEDED)), policy)
        entry = await conn.fetchval("SELECT id FROM journal_entries")
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            await conn.execute(
                "INSERT INTO postings (entry_id, leg, account, currency, amount)"
                " VALUES ($1, 7, 'merchant_balance:shop', 'EUR', -1)",
                entry,
            )
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            await conn.execute(  # balanced in total, but not per currency
                "INSERT INTO postings (entry_id, leg, account, currency, amount)"
                " VALUES ($1, 7, 'a', 'EUR', 5), ($1, 8, 'b', 'USD', -5)",
                entry,
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE postings SET amount = amount * 2")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM postings")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE payments SET refunded = paid + 1")
        # A balanced pair added by one statement is accepted (a correction entry would be).
        await conn.execute(
            "INSERT INTO postings (entry_id, leg, account, currency, amount)"
            " VALUES ($1, 7, 'a', 'EUR', 5), ($1, 8, 'b', 'EUR', -5)",
            entry,
        )


async def test_the_batch_write_is_one_statement_the_balance_trigger_guards(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    """The ledger writes a batch's tables as parts of one statement (``store.write_batch``):
    the postings' balance trigger still sees their rows, and a failure takes every table's
    rows with it, not only the postings'."""
    from workers.ledger import store

    entry = "00000000-0000-4000-8000-0000000000e1"
    event = store.EventRow(
        "ev-1", "t", "s", "subj", "payment.x", "paysera", "main", "shop", "corr", b'{"a":1}'
    )
    unbalanced = store.BatchWrite(
        entries=[store.EntryRow(entry, "00000000-0000-4000-8000-0000000000a1", "memo")],
        postings=[
            store.PostingRow(entry, 0, "a", "EUR", 5),
            store.PostingRow(entry, 1, "b", "EUR", -4),
        ],
        events=[event],
    )
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                await store.write_batch(conn, unbalanced)
        counts = [
            await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - constant names
            for table in ("journal_entries", "postings", "events")
        ]
        assert counts == [0, 0, 0]
        balanced = store.BatchWrite(
            entries=unbalanced.entries,
            postings=[*unbalanced.postings[:1], store.PostingRow(entry, 1, "b", "EUR", -5)],
            events=[event],
        )
        async with conn.transaction():
            written = await store.write_batch(conn, balanced)
        assert (written.payments, written.callbacks, list(written.events)) == (0, 0, ["ev-1"])
        async with conn.transaction():
            again = await store.write_batch(conn, store.BatchWrite(events=[event]))
        assert again.events == {}  # a known event id is not written (nor published) again


async def test_the_callback_is_kept_byte_for_byte(pool: asyncpg.Pool[Any], policy: Policy) -> None:
    item = Incoming.of(callback(S.SUCCEEDED), "corr")
    async with pool.acquire() as conn:
        await apply_batch(conn, [item], policy)
        stored = await conn.fetchval("SELECT body::text FROM callbacks")
    assert stored.encode() == item.body


async def test_check_reports_every_broken_reference(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await apply_batch(conn, items(callback(S.SUCCEEDED), callback(S.PENDING, "T2")), policy)
        assert (await check_ledger(conn)).ok
        await conn.execute("DELETE FROM payments WHERE transaction_id = 'T2'")
        await conn.execute("ALTER TABLE journal_entries DISABLE TRIGGER USER")
        try:
            await conn.execute("DELETE FROM journal_entries")
        finally:
            await conn.execute("ALTER TABLE journal_entries ENABLE TRIGGER USER")
        breaches = (await check_ledger(conn)).breaches
    assert any("postings of entry" in b for b in breaches)
    assert any("callback" in b and "does not exist" in b for b in breaches)


async def test_check_reports_postings_that_disagree_with_the_payment(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    async with pool.acquire() as conn:
        await apply_batch(conn, items(callback(S.SUCCEEDED)), policy)
        await conn.execute("UPDATE payments SET paid = 2000")
        report = await check_ledger(conn)
        assert not report.ok
        assert any("postings" in b for b in report.breaches)


async def test_check_reads_in_chunks_and_misses_nothing(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    """Chunk size 2 over 5 payments: a missing event and a paid payment's lost row are found
    wherever they fall, and every row is counted."""
    facts = [callback(S.SUCCEEDED, f"T{n}") for n in range(5)]
    async with pool.acquire() as conn:
        await apply_batch(conn, items(*facts), policy)
        report = await check_ledger(conn, chunk_size=2)
        assert report.ok
        assert (report.counts["payments"], report.counts["callbacks"]) == (5, 5)
        await conn.execute("DELETE FROM events WHERE subject = 'T3'")
        await conn.execute("DELETE FROM payments WHERE transaction_id = 'T4'")
        report = await check_ledger(conn, chunk_size=2)
    assert (report.counts["payments"], report.counts["callbacks"]) == (4, 5)
    assert sum("event payhook.payment.succeeded missing" in b for b in report.breaches) == 1
    assert sum("postings for unknown payment" in b for b in report.breaches) == 1


async def test_one_bad_message_does_not_block_the_batch(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    bad = callback(S.SUCCEEDED, "T2", provider_status="ok\x00")  # Postgres text refuses NUL
    batch = items(callback(S.SUCCEEDED, "T1"), bad, callback(S.SUCCEEDED, "T3"))
    result, failures = await apply_each(pool, batch, policy)
    assert failures[0] is None
    assert failures[2] is None
    assert failures[1] is not None
    assert "0x00" in failures[1] or "\\u0000" in failures[1] or "NUL" in failures[1].upper()
    assert result.recorded == 2
    async with pool.acquire() as conn:
        assert set(await ledger_states(conn)) == {
            ("paysera", "main", "T1"),
            ("paysera", "main", "T3"),
        }


@pytest.mark.parametrize("size", [1, 3])
async def test_a_query_cut_by_a_postgres_shutdown_is_an_outage_not_the_messages_fault(
    pool: asyncpg.Pool[Any], policy: Policy, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Seen in tests/chaos during ``restart-postgres``: asyncpg raised InternalClientError
    ("cannot switch to state 15; another operation (2) is in progress") and the ledger failed
    the message instead of waiting for the database."""

    async def cut(*_: Any, **__: Any) -> Any:
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        )

    monkeypatch.setattr("workers.ledger.apply.apply_with_retry", cut)
    batch = items(*(callback(S.SUCCEEDED, f"T{n}") for n in range(size)))
    with pytest.raises(asyncpg.exceptions.InternalClientError):
        await apply_each(pool, batch, policy)


async def test_a_batch_waits_for_one_creating_the_same_payment(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    first = items(callback(S.SUCCEEDED, "T1", fee_amount=5))
    second = items(
        callback(S.PENDING, "T1"),
        callback(S.PARTIALLY_REFUNDED, "T1", refund_amount=100, variant="r"),
        callback(S.SUCCEEDED, "T2"),
    )
    async with pool.acquire() as one, pool.acquire() as two:
        outer = one.transaction()
        await outer.start()
        await apply_batch(one, first, policy)  # T1 created and locked, not committed yet
        task = asyncio.create_task(apply_batch(two, second, policy))

        async def waiting() -> bool:
            return bool(
                await one.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            )

        for _ in range(200):
            if await waiting():
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        await outer.commit()  # now the second batch sees T1 as the first one left it
        result = await task
        assert result.outcomes == {"stale": 1, "applied": 2}
        model = Model({("paysera", "main"): "shop"})
        for item in [*first, *second]:
            model.apply(item.callback)
        assert await ledger_states(one) == model.states()
        assert await ledger_balances(one) == model.balances()
        assert (await check_ledger(one)).ok


async def test_concurrent_batches_on_the_same_payments_converge(
    pool: asyncpg.Pool[Any], policy: Policy
) -> None:
    history = [
        callback(S.PENDING, "T1"),
        callback(S.SUCCEEDED, "T1", fee_amount=10),
        callback(S.PARTIALLY_REFUNDED, "T1", refund_amount=100, variant="a"),
        callback(S.PARTIALLY_REFUNDED, "T1", refund_amount=200, variant="b"),
        callback(S.PENDING, "T2"),
        callback(S.SUCCEEDED, "T2"),
        callback(S.PENDING, "T3", kind=Kind.PAYOUT),
        callback(S.SUCCEEDED, "T3", kind=Kind.PAYOUT),
    ]
    model = Model({("paysera", "main"): "shop"})
    for cb in history:
        model.apply(cb)
    # Eight overlapping batches in different orders, all at once, on separate connections.
    batches = [items(*history[i:] + history[:i]) for i in range(8)]
    await asyncio.gather(*(apply_with_retry(pool, batch, policy) for batch in batches))
    async with pool.acquire() as conn:
        assert await ledger_states(conn) == model.states()
        assert await ledger_balances(conn) == model.balances()
        assert await conn.fetchval("SELECT count(*) FROM callbacks") == len(history)
        assert (await check_ledger(conn)).ok
