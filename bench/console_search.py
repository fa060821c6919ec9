"""How fast the console's searches are on a big ledger (and what their indexes cost writes).

    .venv/bin/python bench/console_search.py [--payments 1000000] [--repeat 5] [--keep]

Creates its own database ``payhook_bench_console_<hex>`` on the server of
``PAYHOOK_DATABASE_URL``, applies the migrations, and fills it with ``--payments`` payments by
``INSERT … SELECT generate_series`` in the real table shapes: one callback each (its document
as the ingress writes it), a journal entry with two balanced postings for every paid one, one
event each and its webhook delivery (1.5 % failing, 1 % failed, 0.5 % parked, with attempts).
Distributions: five providers (40/25/15/15/5 %), 200 merchants with a heavy head, states from
80 % succeeded down to 0.1 % refund_failed, 0.3 % flagged for attention, created over 180
days, the newest 90,000 callbacks in the last 15 minutes (100/s).

Then it times every search filter through the very functions the console and the commands
call (``search_payments``, ``search_deliveries``, ``count_deliveries``, ``queries.overview``,
a payment's page), median of ``--repeat`` runs, with the plan's top and Postgres' execution
time from ``EXPLAIN (ANALYZE, BUFFERS)``, and what the state index costs an update that
changes the state (50,000 updates with and without it). The database is dropped at the end
(unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from runtime.database import init_connection
from workers.console import queries
from workers.db import migrate
from workers.ledger.queries import payment_details
from workers.ledger.search import PaymentFilter, build_query, search_payments
from workers.webhooks.filters import (
    DeliveryFilter,
    build_search,
    count_deliveries,
    count_query,
    deliveries_of_events,
    search_deliveries,
)

SERVER_URL = os.environ.get("PAYHOOK_DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/payhook")

# (state, cumulative share): a payment's state from one random number.
_STATES = [
    ("succeeded", 0.80),
    ("pending", 0.88),
    ("failed", 0.93),
    ("expired", 0.96),
    ("refunded", 0.98),
    ("partially_refunded", 0.99),
    ("cancelled", 0.999),
    ("refund_failed", 1.0),
]
_STATE_CASE = "CASE " + " ".join(f"WHEN r_state < {c} THEN '{s}'" for s, c in _STATES) + " END"

FILL = f"""
CREATE TEMP TABLE seed AS
SELECT i,
       CASE WHEN r_provider < 0.40 THEN 'paysera' WHEN r_provider < 0.65 THEN 'paycore'
            WHEN r_provider < 0.80 THEN 'paygol' WHEN r_provider < 0.95 THEN 'paypro'
            ELSE 'paysepro' END AS provider,
       'm' || floor(power(r_merchant, 3) * 200)::int AS merchant,
       {_STATE_CASE} AS state,
       (100 + floor(r_amount * 100000))::bigint AS amount,
       CASE WHEN r_attention < 0.002 THEN 'no_expectation: no order expectation registered'
            WHEN r_attention < 0.0025 THEN 'amount_mismatch: mismatch:amount'
            WHEN r_attention < 0.003 THEN 'conflict: succeeded after failed' END AS attention,
       CASE WHEN i > $1 - 90000 THEN now() - (($1 - i) * interval '10 ms')
            ELSE now() - interval '15 minutes' - (($1 - 90000 - i) * interval '15.5 s') END
           AS created_at,
       md5('payment' || i)::uuid AS id,
       md5('callback' || i)::uuid AS callback_id
FROM (SELECT i, random() AS r_provider, random() AS r_merchant, random() AS r_state,
             random() AS r_amount, random() AS r_attention
      FROM generate_series(1, $1) AS i) r;

INSERT INTO payments (id, provider, account, transaction_id, kind, state, merchant, order_id,
                      currency, amount, test, paid, refund_sum, full_refund, refunded,
                      attention, created_at, updated_at)
SELECT id, provider, CASE WHEN provider = 'paypro' THEN 'idr' ELSE 'main' END,
       provider || '-' || i, 'payment', state, merchant, 'ORD-' || i, 'EUR', amount, false,
       CASE WHEN state IN ('succeeded', 'refunded', 'partially_refunded', 'refund_failed')
            THEN amount ELSE 0 END,
       CASE WHEN state = 'partially_refunded' THEN amount / 2 ELSE 0 END,
       state = 'refunded',
       CASE WHEN state = 'refunded' THEN amount WHEN state = 'partially_refunded'
            THEN amount / 2 ELSE 0 END,
       attention, created_at, created_at
FROM seed ORDER BY i;

INSERT INTO callbacks (id, payment_id, status, provider_status, variant, outcome, reason,
                       state_before, state_after, correlation_id, body, recorded_at)
SELECT callback_id, id, state, state, '', 'applied', NULL, 'new', state, md5('corr' || i),
       json_build_object(
           'schema_version', 1, 'id', callback_id, 'provider', provider,
           'account', 'main', 'transaction_id', provider || '-' || i,
           'provider_status', state, 'status', state, 'kind', 'payment',
           'verified_by', 'signature',
           'received_at', to_char((created_at - interval '40 ms') AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
           'raw', json_build_object(
               'method', 'POST', 'path', '/callbacks/' || provider || '/main', 'query', '',
               'headers', json_build_object('X-Signature', md5(i::text)),
               'body', 'orderid=ORD-' || i || '&amount=' || amount || '&email=p' || i || '%40x.io',
               'remote', '203.0.113.7'),
           'order_id', 'ORD-' || i, 'amount', amount, 'currency', 'EUR', 'test', false,
           'variant', '', 'correlation_id', md5('corr' || i), 'details', json_build_object()
       ),
       created_at
FROM seed ORDER BY i;

INSERT INTO journal_entries (id, payment_id, memo, created_at)
SELECT callback_id, id, 'applied new->' || state || ', paid +' || amount, created_at
FROM seed WHERE state IN ('succeeded', 'refunded', 'partially_refunded', 'refund_failed');

INSERT INTO postings (entry_id, leg, account, currency, amount)
SELECT callback_id, leg, CASE leg WHEN 0 THEN 'provider_clearing:' || provider || ':main'
                                  ELSE 'merchant_balance:' || merchant END,
       'EUR', CASE leg WHEN 0 THEN amount ELSE -amount END
FROM seed CROSS JOIN (VALUES (0), (1)) AS legs(leg)
WHERE state IN ('succeeded', 'refunded', 'partially_refunded', 'refund_failed');

INSERT INTO events (id, type, source, subject, routing_key, provider, account, merchant,
                    correlation_id, body, created_at, published_at)
SELECT callback_id::text, 'payhook.payment.' || state, '/payhook/' || provider || '/main',
       provider || '-' || i, 'payment.' || state || '.' || provider, provider, 'main',
       merchant, md5('corr' || i),
       jsonb_build_object('id', callback_id, 'type', 'payhook.payment.' || state,
                          'subject', provider || '-' || i, 'data',
                          jsonb_build_object('amount', amount, 'currency', 'EUR')),
       created_at, CASE WHEN i > $1 - 1000 THEN NULL ELSE created_at END
FROM seed ORDER BY i;

INSERT INTO webhook_deliveries (event_id, merchant, event_type, state, round, attempts,
                                last_attempt_at, last_status, last_error, next_attempt_at,
                                delivered_at, created_at, updated_at)
SELECT callback_id::text, merchant, 'payhook.payment.' || state,
       CASE WHEN r < 0.015 THEN 'pending' WHEN r < 0.025 THEN 'failed'
            WHEN r < 0.03 THEN 'parked' ELSE 'delivered' END,
       0, CASE WHEN r < 0.03 THEN 1 + (i % 3) ELSE 1 END, created_at,
       CASE WHEN r < 0.03 THEN 500 ELSE 200 END, NULL,
       CASE WHEN r < 0.015 THEN created_at + interval '1 hour' END,
       CASE WHEN r >= 0.03 THEN created_at END, created_at, created_at
FROM (SELECT *, random() AS r FROM seed) s ORDER BY i;

INSERT INTO webhook_attempts (event_id, merchant, round, attempt, started_at, finished_at,
                              duration_ms, status_code, response_body, next_action, next_delay_s)
SELECT d.event_id, d.merchant, 0, n, d.created_at, d.created_at, 120, 500, 'down',
       CASE WHEN n < d.attempts THEN 'retry' ELSE 'dead' END, 3600
FROM webhook_deliveries d CROSS JOIN LATERAL generate_series(1, d.attempts) AS n
WHERE d.state <> 'delivered';
"""


_HEADER = f"{'rows':>5} {'median':>9} {'pg exec':>10}  plan"


async def _timed(run: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await run()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


async def _explain(conn: Any, sql: str, params: list[Any]) -> tuple[str, str]:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
    lines = [r[0] for r in rows]
    nodes = [ln.strip().lstrip("-> ").split("  (")[0] for ln in lines if "(cost=" in ln]
    executed = next((ln for ln in lines if ln.startswith("Execution Time")), "")
    return " / ".join(nodes[:3]), executed.removeprefix("Execution Time: ")


async def bench(conn: Any, repeat: int, n: int) -> None:
    # A cursor deep in the ledger (about half-way back), as if paged there.
    deep = await conn.fetchrow(
        "SELECT created_at, id FROM payments ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1",
        n // 2,
    )
    from workers.ledger.search import encode_cursor

    deep_cursor = encode_cursor(deep["created_at"], deep["id"])
    newest = await search_payments(conn, PaymentFilter())
    some = await conn.fetchrow(
        "SELECT provider, transaction_id, order_id FROM payments ORDER BY id OFFSET $1 LIMIT 1",
        n // 3,
    )
    now = await conn.fetchval("SELECT now()")
    day = (now - timedelta(days=90), now - timedelta(days=89))
    payments: list[tuple[str, PaymentFilter, str | None]] = [
        ("newest (no filter)", PaymentFilter(), None),
        ("page 2 (cursor)", PaymentFilter(), newest.next_cursor),
        ("page ~n/2 back (cursor)", PaymentFilter(), deep_cursor),
        ("provider=paypro (15 %)", PaymentFilter(provider="paypro"), None),
        ("provider=paysepro (5 %)", PaymentFilter(provider="paysepro"), None),
        ("transaction_id", PaymentFilter(transaction_id=some["transaction_id"]), None),
        ("provider+transaction_id",
         PaymentFilter(provider=some["provider"], transaction_id=some["transaction_id"]), None),
        ("order_id", PaymentFilter(order_id=some["order_id"]), None),
        ("merchant m0 (head)", PaymentFilter(merchant="m0"), None),
        ("merchant m199 (tail)", PaymentFilter(merchant="m199"), None),
        ("state=succeeded", PaymentFilter(state="succeeded"), None),
        ("state=refund_failed (0.1 %)", PaymentFilter(state="refund_failed"), None),
        ("attention=any", PaymentFilter(attention="any"), None),
        ("attention=conflict", PaymentFilter(attention="conflict"), None),
        ("one day, 90 days ago", PaymentFilter(since=day[0], until=day[1]), None),
        ("merchant m150 + state=expired", PaymentFilter(merchant="m150", state="expired"), None),
        (
            "provider+state+since 30 d",
            PaymentFilter(provider="paygol", state="cancelled", since=now - timedelta(days=30)),
            None,
        ),
        ("no match: merchant m0 + refund_failed + 1 day",
         PaymentFilter(merchant="m0", state="refund_failed", since=day[0], until=day[1]), None),
    ]  # fmt: skip
    print(f"\n{'payments search (50 per page)':<48} {_HEADER}")
    for name, flt, after in payments:
        ms, page = await _timed(
            lambda flt=flt, after=after: search_payments(conn, flt, after=after), repeat
        )
        plan, executed = await _explain(conn, *build_query(flt, 50, after))
        print(f"{name:<48} {len(page.rows):>5} {ms:>7.2f}ms {executed:>10}  {plan}")

    deliveries = [
        ("default (failing, failed, parked)", DeliveryFilter()),
        ("dead", DeliveryFilter(states=("dead",))),
        ("failing", DeliveryFilter(states=("failing",))),
        ("merchant m0", DeliveryFilter(merchants=("m0",))),
        ("merchant m199, parked", DeliveryFilter(states=("parked",), merchants=("m199",))),
        ("changed since 1 h", DeliveryFilter(since=now - timedelta(hours=1))),
    ]
    print(f"\n{'deliveries search (50 per page)':<48} {_HEADER}")
    for name, dflt in deliveries:
        ms, dpage = await _timed(lambda dflt=dflt: search_deliveries(conn, dflt), repeat)
        plan, executed = await _explain(conn, *build_search(dflt, 50, None))
        print(f"{name:<48} {len(dpage.rows):>5} {ms:>7.2f}ms {executed:>10}  {plan}")
    for name, dflt in deliveries[:2]:
        ms, count = await _timed(lambda dflt=dflt: count_deliveries(conn, dflt), repeat)
        plan, executed = await _explain(conn, *count_query(dflt))
        print(f"{'count: ' + name:<48} {count:>5} {ms:>7.2f}ms {executed:>10}  {plan}")

    print()
    ms, view = await _timed(lambda: queries.overview(conn), repeat)
    covered = f"window cut to {view.covered_s:.0f} s" if view.covered_s else "full window"
    print(f"{'overview (every Postgres figure)':<48} {'':>5} {ms:>7.2f}ms  ({covered}, "
          f"attention {view.attention_total}, unpublished {view.unpublished})")  # fmt: skip
    await conn.execute("SET jit = off")  # as overview() does, for its own transaction
    for label, sql, params in (
        ("  callbacks/s window", queries._CALLBACK_RATES, [queries.CALLBACK_WINDOW_CAP]),
        ("  ledger lag", queries._LAG, []),
        ("  outbox backlog", queries._BACKLOG, []),
        ("  deliveries in trouble by merchant", queries._TROUBLE_BY_MERCHANT, []),
        ("  attention by kind", queries._ATTENTION, []),
    ):
        plan, executed = await _explain(conn, sql, params)
        print(f"{label:<48} {'':>5} {'':>9} {executed:>10}  {plan}")
    await conn.execute("RESET jit")

    payment_id = newest.rows[3]["id"]

    async def payment_page() -> int:
        key = await queries.payment_key(conn, payment_id)
        assert key is not None
        provider, account, txid = key
        await payment_details(conn, provider, txid, account)
        await queries.callback_documents(conn, payment_id)
        events = await queries.events_of_payment(conn, provider, account, txid)
        ids = [e["id"] for e in events]
        await deliveries_of_events(conn, ids)
        await queries.attempts_of_events(conn, ids)
        return len(ids)

    ms, _ = await _timed(payment_page, repeat)
    print(f"{'a payment page (7 queries)':<48} {'':>5} {ms:>7.2f}ms")


_NEW_PAYMENTS = """
INSERT INTO payments (id, provider, account, transaction_id, kind, state, merchant, order_id,
                      currency, amount, test, attention, created_at, updated_at)
SELECT md5('extra' || $1::text || i)::uuid, 'paysera', 'main', 'x' || $1::text || '-' || i,
       'payment', 'pending', 'm' || (i % 200), 'ORD-x' || $1::text || i, 'EUR', 1250, false,
       NULL, now(), now()
FROM generate_series(1, $2) AS i
"""
_CONSOLE_PAYMENT_INDEXES = (
    "payments_recent",
    "payments_merchant_recent",
    "payments_state_recent",
    "payments_transaction",
    "payments_order_id",
    "payments_attention_recent",
)


async def insert_cost(conn: Any, n: int) -> None:
    """New payments (the ledger's commonest write) with and without migration 070's indexes."""
    count = min(50_000, n // 20)
    figures = []
    for label, tag in (("with migration 070's indexes", "a"), ("without them", "b")):
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        await conn.execute(_NEW_PAYMENTS, tag, count)
        figures.append((label, (time.perf_counter() - t0) * 1e6 / count))
        if tag == "a":
            for index in _CONSOLE_PAYMENT_INDEXES:
                await conn.execute(f"DROP INDEX IF EXISTS {index}")
    print(f"\ninsert of new payments, {count} rows (one statement):")
    for label, us in figures:
        print(f"  {label:<30} {us:6.1f} µs per row")


async def state_index_cost(conn: Any, n: int) -> None:
    """50,000 state changes (pending -> succeeded) with the state index, then without it."""
    count = min(50_000, n // 20)
    figures = []
    for label, offset in (("with payments_state_recent", 0), ("without it", count)):
        ids = await conn.fetch(
            "SELECT id FROM payments ORDER BY created_at LIMIT $1 OFFSET $2", count, offset
        )
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        await conn.execute(
            "UPDATE payments SET state = CASE WHEN state = 'succeeded' THEN 'refund_pending'"
            " ELSE state END, updated_at = now() WHERE id = ANY($1::uuid[])",
            [r["id"] for r in ids],
        )
        figures.append((label, (time.perf_counter() - t0) * 1e6 / count))
        if offset == 0:
            await conn.execute("DROP INDEX payments_state_recent")
    print(f"\nupdate changing the state, {count} rows (one statement):")
    for label, us in figures:
        print(f"  {label:<30} {us:6.1f} µs per row")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    name = f"payhook_bench_console_{secrets.token_hex(4)}"
    server = await asyncpg.connect(SERVER_URL)
    await server.execute(f'CREATE DATABASE "{name}"')
    url = SERVER_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url)
        conn = await asyncpg.connect(url)
        await init_connection(conn)
        try:
            t0 = time.perf_counter()
            await conn.execute("SET synchronous_commit = off; SELECT setseed(0.42)")
            for statement in FILL.split(";\n\n"):
                step = time.perf_counter()
                sql = statement.strip()
                await conn.execute(sql.replace("$1", str(args.payments)))
                print(f"fill: {sql.split()[0]} {sql.split()[2]:<20} "
                      f"{time.perf_counter() - step:6.1f} s")  # fmt: skip
            await conn.execute("VACUUM ANALYZE")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            )
            print(f"filled {args.payments:,} payments in {time.perf_counter() - t0:.0f} s "
                  f"(database {size})")  # fmt: skip
            await bench(conn, args.repeat, args.payments)
            await state_index_cost(conn, args.payments)
            flt = PaymentFilter(state="refund_failed")
            ms, page = await _timed(lambda: search_payments(conn, flt), args.repeat)
            print(f"  state=refund_failed search without the index: {len(page.rows)} rows "
                  f"in {ms:.1f} ms")  # fmt: skip
            await insert_cost(conn, args.payments)
        finally:
            await conn.close()
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            await server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
