"""Fill a payhook database with payments of the shape the ledger writes, by SQL, in chunks.

Used by ``bench/ledger_growth.py``. Each chunk of payments (one transaction) writes what the
real path writes for them: ``payments`` (the worker's columns), their ``callbacks`` (a
``CallbackReceived`` document with a raw request of the provider's size), ``journal_entries``
and balanced ``postings`` (the same accounts and legs as ``workers/ledger/postings.py``),
published ``events`` (a CloudEvent carrying the callback), ``webhook_deliveries`` and
``webhook_attempts`` for merchant events, and ``order_expectations`` for some orders. Every
index of the schema is live while it fills, so random keys (uuids, transaction ids) split
pages as they do under traffic, and each insert pays the triggers (postings' balance check)
and the foreign key (attempts to deliveries).

How it differs from real traffic (said in docs/operations.md too): rows arrive a chunk at a
time in payment order (a payment's callbacks are adjacent in ``callbacks``, where real ones
interleave with other payments' over minutes), nothing is ever updated (real payments are
inserted and then updated by their later callbacks, leaving dead tuples for autovacuum; real
events are inserted, then updated once by the relay), and no duplicates reach the tables
(they never do: the worker skips them). Distributions are fixed proportions from hashes of
the payment number, so a fill is the same on every run.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

__all__ = ["FILL_TABLE", "fill_to", "filled"]

# One row: how many payments the fill has written so far (the fill resumes from there).
FILL_TABLE = "bench_growth_fill"

# Raw request sizes per provider, from their documents (seeds/, providers.md): Paysera posts
# data=<base64 of the order's fields>&ss1=<md5>&ss2=<RSA signature, base64>; PayCore posts a
# JSON document; Paygol, Paypro and Paysepro send a short query. Characters of the raw
# request (query or body); headers add about 150.
_RAW_SIZE = "CASE provider WHEN 'paysera' THEN 1100 WHEN 'paycore' THEN 700 ELSE 280 END"

# Per payment number g: ten independent uniform values 0..999, then the payment's columns.
# Shares: providers paysera 40 %, paygol 20 %, paycore 20 %, paypro 10 %, paysepro 10 %;
# accounts main 85 % / eu; 80 merchants, skewed (the largest takes ~30 %), 1 % unallocated;
# 3 % payouts; EUR 55 %, USD 25 %, GBP 10 %, PLN 6 %, SEK 4 %; amounts 1.00-1,000.00,
# log-uniform; 2 % test; states as below; 0.3 % flagged for attention; 5 % of payments get
# a late `pending` (stale) as well. One payment per 1.5 s of created_at.
_CHUNK_PAYMENTS = """
CREATE TEMP TABLE fill_p ON COMMIT DROP AS
WITH r AS (
    SELECT g, md5('growth-p' || g)::uuid AS id,
           (abs(hashint8extended(g, 1)) % 1000)::int AS r1,
           (abs(hashint8extended(g, 2)) % 1000)::int AS r2,
           (abs(hashint8extended(g, 3)) % 1000)::int AS r3,
           (abs(hashint8extended(g, 4)) % 1000)::int AS r4,
           (abs(hashint8extended(g, 5)) % 1000)::int AS r5,
           (abs(hashint8extended(g, 6)) % 1000)::int AS r6,
           (abs(hashint8extended(g, 7)) % 1000)::int AS r7,
           (abs(hashint8extended(g, 8)) % 1000)::int AS r8,
           (abs(hashint8extended(g, 9)) % 1000)::int AS r9,
           (abs(hashint8extended(g, 10)) % 1000)::int AS r10
    FROM generate_series($1::bigint, $2::bigint - 1) AS g
), a AS (
    SELECT g, id, r4, r9, r10,
           (ARRAY['paysera', 'paysera', 'paysera', 'paysera', 'paygol', 'paygol', 'paycore',
                  'paycore', 'paypro', 'paysepro'])[1 + r1 % 10] AS provider,
           CASE WHEN r2 < 850 THEN 'main' ELSE 'eu' END AS account,
           CASE WHEN r3 < 10 THEN NULL
                ELSE 'merchant-' || floor(power(r3 / 1000.0, 3) * 80)::int END AS merchant,
           CASE WHEN r4 < 30 THEN NULL ELSE 'ORD-' || (1000000 + g) END AS order_id,
           CASE WHEN r5 < 30 THEN 'payout' ELSE 'payment' END AS kind,
           CASE WHEN r6 < 550 THEN 'EUR' WHEN r6 < 800 THEN 'USD' WHEN r6 < 900 THEN 'GBP'
                WHEN r6 < 960 THEN 'PLN' ELSE 'SEK' END AS currency,
           (100 * power(10, r7 / 333.0))::bigint AS amount,
           r8 < 20 AS test,
           CASE WHEN r9 < 690 THEN 'succeeded' WHEN r9 < 760 THEN 'pending'
                WHEN r9 < 830 THEN 'failed' WHEN r9 < 880 THEN 'expired'
                WHEN r9 < 900 THEN 'cancelled' WHEN r9 < 940 THEN 'partially_refunded'
                WHEN r9 < 965 THEN 'refunded' WHEN r9 < 980 THEN 'partially_paid'
                WHEN r9 < 990 THEN 'refund_pending' ELSE 'succeeded' END AS state0,
           timestamptz '2026-06-01 00:00:00+00' + g * interval '1.5 seconds' AS created_at
    FROM r
), b AS (
    SELECT *,
           CASE WHEN kind = 'payout' AND state0 IN ('partially_refunded', 'refunded',
                'refund_pending') THEN 'succeeded' ELSE state0 END AS state
    FROM a
), m AS (
    SELECT *,
           CASE WHEN state IN ('succeeded', 'partially_refunded', 'refunded', 'refund_pending')
                THEN amount WHEN state = 'partially_paid' THEN amount / 2 ELSE 0 END AS paid
    FROM b
)
SELECT g, id, provider, account, merchant, order_id, kind, currency, amount, test, state,
       paid, created_at, r4, r10,
       CASE WHEN provider IN ('paycore', 'paysera') AND paid > 0
            THEN greatest(1, amount * 3 / 100) ELSE 0 END AS fee,
       CASE WHEN state = 'partially_refunded' THEN amount / 4 ELSE 0 END AS refund_sum,
       state = 'refunded' AS full_refund,
       CASE WHEN test THEN 'test:' ELSE '' END AS pre
FROM m
"""

_INSERT_PAYMENTS = """
INSERT INTO payments (id, provider, account, transaction_id, kind, state, merchant, order_id,
                      currency, amount, test, paid, refund_sum, full_refund, refunded, fee,
                      fee_currency, attention, created_at, updated_at)
SELECT id, provider, account,
       CASE provider WHEN 'paycore' THEN 'cpi_' ELSE '' END
           || substr(md5('t' || g), 1, 12) || g,
       kind, state, merchant, order_id, currency, amount, test, paid, refund_sum, full_refund,
       CASE WHEN full_refund THEN paid ELSE least(refund_sum, paid) END,
       fee, CASE WHEN fee > 0 THEN currency END,
       CASE WHEN r10 < 3 THEN 'conflict: succeeded after failed' END,
       created_at, created_at + interval '4 minutes'
FROM fill_p
"""

# A payment's callbacks: its `pending` (n 0), the move out of it (n 1), a refund (n 2), and
# sometimes a late `pending` that changes nothing (n 3, stale: no event).
_CHUNK_CALLBACKS = f"""
CREATE TEMP TABLE fill_c ON COMMIT DROP AS
SELECT p.g, p.id AS payment_id, p.provider, p.account, p.merchant, p.order_id, p.kind,
       p.currency, p.amount, p.test, p.pre, s.n, s.status, s.state_before, s.state_after,
       s.outcome, md5('growth-c' || p.g || '-' || s.n)::uuid AS id,
       p.created_at + s.n * interval '3 minutes' AS recorded_at,
       CASE WHEN s.n = 1 THEN p.paid ELSE 0 END AS paid_delta,
       CASE WHEN s.n = 1 THEN p.fee ELSE 0 END AS fee_delta,
       CASE WHEN s.n = 2 AND p.state = 'refunded' THEN p.paid
            WHEN s.n = 2 AND p.state = 'partially_refunded' THEN p.refund_sum
            ELSE 0 END AS refund_delta,
       substr(pad.text, 1, {_RAW_SIZE}) AS raw
FROM fill_p AS p
CROSS JOIN LATERAL (VALUES
    (0, 'pending', 'new', 'pending', 'applied'),
    (1, CASE WHEN p.state IN ('partially_refunded', 'refunded', 'refund_pending')
             THEN 'succeeded' ELSE p.state END,
        'pending',
        CASE WHEN p.state IN ('partially_refunded', 'refunded', 'refund_pending')
             THEN 'succeeded' ELSE p.state END,
        'applied'),
    (2, p.state, 'succeeded', p.state, 'applied'),
    (3, 'pending', p.state, p.state, 'stale')
) AS s (n, status, state_before, state_after, outcome)
JOIN fill_pad AS pad ON pad.k = p.g % 1000
WHERE s.n = 0
   OR (s.n = 1 AND p.state <> 'pending')
   OR (s.n = 2 AND p.state IN ('partially_refunded', 'refunded', 'refund_pending'))
   OR (s.n = 3 AND p.r10 BETWEEN 3 AND 52)
"""

# Random base64 to cut raw requests from: real signatures and encoded data do not compress.
_PAD = """
CREATE TEMP TABLE IF NOT EXISTS fill_pad AS
SELECT k, replace(string_agg(encode(sha512(('pad' || k || '-' || i)::bytea), 'base64'), ''),
                  E'\n', '') AS text
FROM generate_series(0, 999) AS k, generate_series(1, 14) AS i GROUP BY k
"""

_RAW_JSON = """json_build_object(
    'method', CASE WHEN c.provider = 'paycore' THEN 'POST' ELSE 'GET' END,
    'path', '/callbacks/' || c.provider || '/' || c.account,
    'query', CASE WHEN c.provider = 'paycore' THEN '' ELSE c.raw END,
    'headers', json_build_object('user-agent', c.provider || '-notifier/2.1',
        'content-type', 'application/x-www-form-urlencoded', 'x-forwarded-for', '203.0.113.7',
        'x-request-id', md5(c.id::text)),
    'remote', '10.0.4.12',
    'body', CASE WHEN c.provider = 'paycore' THEN c.raw ELSE '' END)"""

_INSERT_CALLBACKS = """
INSERT INTO callbacks (id, payment_id, status, provider_status, variant, outcome, reason,
                       state_before, state_after, correlation_id, body, recorded_at)
SELECT c.id, c.payment_id, c.status, c.status || '_' || c.n,
       CASE WHEN c.n = 2 THEN 'r1' WHEN c.n = 3 THEN 'late' ELSE '' END,
       c.outcome, CASE WHEN c.outcome = 'stale' THEN 'pending after ' || c.state_before END,
       c.state_before, c.state_after, md5('corr' || c.id::text),
       {body},
       c.recorded_at
FROM fill_c AS c ORDER BY c.g, c.n
"""

_CALLBACK_BODY = f"""json_build_object('schema_version', 1, 'id', c.id, 'provider', c.provider,
           'account', c.account, 'transaction_id', 'tx-' || c.g,
           'provider_status', c.status || '_' || c.n, 'status', c.status, 'kind', c.kind,
           'verified_by', 'signature', 'received_at', c.recorded_at,
           'raw', {_RAW_JSON},
           'order_id', c.order_id, 'amount', c.amount, 'currency', c.currency,
           'paid_amount', NULLIF(c.paid_delta, 0), 'paid_currency', NULL,
           'refund_amount', NULLIF(c.refund_delta, 0),
           'fee_amount', NULLIF(c.fee_delta, 0), 'fee_currency', NULL, 'test', c.test,
           'variant', '', 'correlation_id', md5('corr' || c.id::text), 'details', '{{}}'::json)"""

_EVENT_BODY = f"""jsonb_build_object('specversion', '1.0',
           'id', md5('growth-e' || c.g || '-' || c.n)::uuid,
           'type', 'payhook.' || c.kind || '.' || c.status,
           'source', '/payhook/' || c.provider || '/' || c.account, 'subject', 'tx-' || c.g,
           'time', c.recorded_at, 'datacontenttype', 'application/json',
           'correlationid', md5('corr' || c.id::text),
           'data', jsonb_build_object('callback_id', c.id, 'provider', c.provider,
               'account', c.account, 'transaction_id', 'tx-' || c.g, 'status', c.status,
               'provider_status', c.status || '_' || c.n, 'kind', c.kind,
               'merchant', c.merchant, 'order_id', c.order_id, 'amount', c.amount,
               'currency', c.currency, 'test', c.test, 'verified_by', 'signature',
               'received_at', c.recorded_at, 'raw', {_RAW_JSON}::jsonb,
               'ledger', jsonb_build_object('payment_status', c.state_after,
                   'paid', c.paid_delta, 'refunded', c.refund_delta, 'fee', c.fee_delta,
                   'currency', c.currency)))"""

# Stub bodies: the same keys as a lookup would use, none of the bulk (see fill_to).
_CALLBACK_STUB = """json_build_object('schema_version', 1, 'id', c.id, 'provider', c.provider,
           'transaction_id', 'tx-' || c.g, 'status', c.status, 'kind', c.kind,
           'order_id', c.order_id)"""

_EVENT_STUB = """jsonb_build_object('specversion', '1.0',
           'id', md5('growth-e' || c.g || '-' || c.n)::uuid,
           'type', 'payhook.' || c.kind || '.' || c.status, 'subject', 'tx-' || c.g,
           'data', jsonb_build_object('callback_id', c.id, 'ledger',
               jsonb_build_object('payment_status', c.state_after, 'paid', c.paid_delta)))"""


_INSERT_ENTRIES = """
INSERT INTO journal_entries (id, payment_id, memo, created_at)
SELECT id, payment_id,
       'applied ' || state_before || '->' || state_after
           || CASE WHEN paid_delta > 0 THEN ', paid +' || paid_delta ELSE '' END
           || CASE WHEN fee_delta > 0 THEN ', fee +' || fee_delta ELSE '' END
           || CASE WHEN refund_delta > 0 THEN ', refunded +' || refund_delta ELSE '' END,
       recorded_at
FROM fill_c WHERE paid_delta > 0 OR fee_delta > 0 OR refund_delta > 0
"""

# The legs of workers/ledger/postings.py: paid (clearing/merchant, reversed for payouts),
# fee (merchant/fees), refund (merchant/clearing). One statement: the balance trigger checks it.
_INSERT_POSTINGS = """
INSERT INTO postings (entry_id, leg, account, currency, amount)
SELECT c.id, l.leg, l.account, c.currency, l.amount
FROM (SELECT *,
             pre || 'provider_clearing:' || provider || ':' || account AS clearing,
             pre || coalesce('merchant_balance:' || merchant,
                             'unallocated:' || provider || ':' || account) AS owed,
             pre || 'provider_fees:' || provider AS fees,
             CASE WHEN kind = 'payout' THEN -1 ELSE 1 END AS sign
      FROM fill_c) AS c
CROSS JOIN LATERAL (VALUES
    (0, c.clearing, c.sign * c.paid_delta), (1, c.owed, -c.sign * c.paid_delta),
    (2, c.owed, c.fee_delta), (3, c.fees, -c.fee_delta),
    (4, c.owed, c.refund_delta), (5, c.clearing, -c.refund_delta)
) AS l (leg, account, amount)
WHERE l.amount <> 0
"""

_INSERT_EVENTS = """
INSERT INTO events (id, type, source, subject, routing_key, provider, account, merchant,
                    correlation_id, body, created_at, published_at)
SELECT md5('growth-e' || c.g || '-' || c.n)::uuid::text,
       'payhook.' || c.kind || '.' || c.status, '/payhook/' || c.provider || '/' || c.account,
       'tx-' || c.g, c.kind || '.' || c.status || '.' || c.provider, c.provider, c.account,
       c.merchant, md5('corr' || c.id::text),
       {body},
       c.recorded_at, c.recorded_at + interval '200 milliseconds'
FROM fill_c AS c WHERE c.outcome <> 'stale' ORDER BY c.g, c.n
"""

# Merchant webhooks: 98.5 % delivered at the first attempt; the rest failing (pending after
# a failed attempt), failed or parked after the schedule's four attempts.
_INSERT_DELIVERIES = """
INSERT INTO webhook_deliveries (event_id, merchant, event_type, state, round, attempts,
                                last_attempt_at, last_status, last_error, next_attempt_at,
                                delivered_at, created_at, updated_at)
SELECT e.id, e.merchant, e.type, d.state, 1, d.attempts, e.published_at + d.span,
       CASE WHEN d.state = 'delivered' THEN 200 ELSE 503 END,
       CASE WHEN d.state <> 'delivered' THEN 'HTTP 503' END,
       CASE WHEN d.state = 'pending' THEN e.published_at + interval '1 hour' END,
       CASE WHEN d.state = 'delivered' THEN e.published_at + d.span END,
       e.published_at, e.published_at + d.span
FROM fill_ev AS e
CROSS JOIN LATERAL (SELECT CASE WHEN e.r < 985 THEN 'delivered' WHEN e.r < 990 THEN 'pending'
                                WHEN e.r < 997 THEN 'failed' ELSE 'parked' END AS state) AS s
CROSS JOIN LATERAL (SELECT s.state,
                           CASE s.state WHEN 'delivered' THEN 1 WHEN 'pending' THEN 2 ELSE 4 END
                               AS attempts,
                           CASE s.state WHEN 'delivered' THEN interval '150 milliseconds'
                                ELSE interval '28 hours' END AS span) AS d
"""

_INSERT_ATTEMPTS = """
INSERT INTO webhook_attempts (event_id, merchant, round, attempt, started_at, finished_at,
                              duration_ms, status_code, error_class, response_body,
                              next_action, next_delay_s, followed_up_at)
SELECT d.event_id, d.merchant, 1, a.n, d.created_at + (a.n - 1) * interval '1 hour',
       d.created_at + (a.n - 1) * interval '1 hour' + interval '120 milliseconds', 120,
       CASE WHEN ok THEN 200 ELSE 503 END, CASE WHEN NOT ok THEN 'http_status' END,
       CASE WHEN ok THEN '{"received":true}'
            ELSE '<html><head><title>503 Service Temporarily Unavailable</title></head>'
                 || '<body><center><h1>503 Service Temporarily Unavailable</h1></center>'
                 || '<hr><center>nginx</center></body></html>' END,
       CASE WHEN ok THEN 'done' WHEN a.n < d.attempts THEN 'retry'
            WHEN d.state = 'parked' THEN 'park' WHEN d.state = 'failed' THEN 'dead'
            ELSE 'retry' END,
       CASE WHEN NOT ok THEN 3600 END,
       CASE WHEN NOT ok THEN d.created_at + (a.n - 1) * interval '1 hour' END
FROM webhook_deliveries AS d
JOIN fill_ev AS e ON e.id = d.event_id AND e.merchant = d.merchant
CROSS JOIN LATERAL generate_series(1, d.attempts) AS a (n)
CROSS JOIN LATERAL (SELECT d.state = 'delivered' AS ok) AS o
"""

_INSERT_EXPECTATIONS = """
INSERT INTO order_expectations (provider, account, order_id, merchant, amount, currency, test,
                                created_at, updated_at)
SELECT provider, account, order_id, merchant, amount, currency, test, created_at, created_at
FROM fill_p
WHERE order_id IS NOT NULL AND merchant IS NOT NULL AND (provider = 'paysepro' OR r4 % 10 = 0)
"""


async def filled(conn: asyncpg.Connection[Any]) -> int:
    """Payments the fill has written to this database so far."""
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {FILL_TABLE} (payments bigint NOT NULL)")
    value = await conn.fetchval(f"SELECT max(payments) FROM {FILL_TABLE}")
    return int(value or 0)


async def _chunk(conn: asyncpg.Connection[Any], lo: int, hi: int, real_bodies: bool) -> None:
    callback_body, event_body = (
        (_CALLBACK_BODY, _EVENT_BODY) if real_bodies else (_CALLBACK_STUB, _EVENT_STUB)
    )
    async with conn.transaction():
        await conn.execute(_PAD)
        await conn.execute(_CHUNK_PAYMENTS, lo, hi)
        await conn.execute(_INSERT_PAYMENTS)
        await conn.execute(_INSERT_EXPECTATIONS)
        await conn.execute(_CHUNK_CALLBACKS)
        await conn.execute(_INSERT_CALLBACKS.format(body=callback_body))
        await conn.execute(_INSERT_ENTRIES)
        await conn.execute(_INSERT_POSTINGS)
        before = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events")
        await conn.execute(_INSERT_EVENTS.format(body=event_body))
        await conn.execute(
            "CREATE TEMP TABLE fill_ev ON COMMIT DROP AS"
            " SELECT id, merchant, type, published_at, (abs(hashtext(id)) % 1000)::int AS r"
            " FROM events WHERE seq > $1 AND merchant IS NOT NULL",
            before,
        )
        await conn.execute(_INSERT_DELIVERIES)
        await conn.execute(_INSERT_ATTEMPTS)
        await conn.execute(f"INSERT INTO {FILL_TABLE} VALUES ($1)", hi)


_CONSTRAINTS = """
SELECT conrelid::regclass::text AS tab, conname, pg_get_constraintdef(oid) AS def, contype
FROM pg_constraint
WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f')
ORDER BY contype = 'f' DESC
"""

_INDEXES = """
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relnamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
"""


async def _without_indexes(conn: asyncpg.Connection[Any]) -> list[str]:
    """Drop every index and key of the schema; return the statements that put them back.

    Random inserts into a dozen B-trees cost the fill ~10x more than building them once
    sorted (900 vs. ~10,000 payments/s on a loaded 2-core machine). The price: rebuilt
    indexes start packed (leaves 90 % full, where random inserts leave them about 70 %), so
    they are smaller than grown ones, and the first inserts into them split pages more often
    than a ledger in its steady state would: if anything, a cost the measurement overstates.
    """
    constraints = await conn.fetch(_CONSTRAINTS)
    indexes = await conn.fetch(_INDEXES)
    for row in constraints:  # foreign keys first: they depend on the keys
        await conn.execute(f'ALTER TABLE {row["tab"]} DROP CONSTRAINT "{row["conname"]}"')
    for row in indexes:
        await conn.execute(f'DROP INDEX "{row["name"]}"')
    restore = [row["def"] for row in indexes]
    restore += [
        f'ALTER TABLE {row["tab"]} ADD CONSTRAINT "{row["conname"]}" {row["def"]}'
        for row in reversed(constraints)  # keys before the foreign keys that need them
    ]
    return restore


async def fill_to(
    conn: asyncpg.Connection[Any],
    target: int,
    *,
    real_bodies: bool = False,
    rebuild_indexes: bool = True,
    chunk: int = 100_000,
    quiet: bool = False,
) -> float:
    """Write payments until ``target`` are filled; then VACUUM (ANALYZE). Returns seconds.

    ``real_bodies``: callbacks and events carry the whole document with a raw request of the
    provider's size (2.2 and 2.4 KB a row: 9 GB per million payments, too much to fill 5 M
    on a benchmark machine). Otherwise they carry stubs with the keys that anything looks up
    (a tenth of the size). The ledger's cost per callback does not depend on those bytes:
    both tables are append-only, a batch writes their last pages and reads them only through
    their indexes, which are the same either way; what the bytes cost is disk, and the
    sizes with real bodies are measured on a small fill (docs/operations.md, Ledger growth).
    """
    started = time.perf_counter()
    done = await filled(conn)
    # The fill's own session only: a lost fill chunk is simply written again.
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    restore = await _without_indexes(conn) if rebuild_indexes and done < target else []
    while done < target:
        lo, hi = done, min(target, done + chunk)
        t = time.perf_counter()
        await _chunk(conn, lo, hi, real_bodies)
        done = hi
        if not quiet:
            rate = (hi - lo) / (time.perf_counter() - t)
            print(f"    filled {done:,} payments ({rate:,.0f} payments/s)", flush=True)
    t = time.perf_counter()
    for statement in restore:
        await conn.execute(statement)
    if restore and not quiet:
        print(f"    indexes and keys rebuilt in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    # What autovacuum would have done by now (it runs during the fill too): visibility map
    # set (index-only scans), statistics for the planner.
    await conn.execute("VACUUM (ANALYZE)")
    if not quiet:
        print(f"    VACUUM (ANALYZE) in {time.perf_counter() - t:.0f} s", flush=True)
    return time.perf_counter() - started
