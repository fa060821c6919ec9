"""Console pages and the matching ``payhook`` commands over one set of rows: the same
filters find the same payments and deliveries, pages are keyset-paged, actions change what
they say."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from contracts.config import Settings
from contracts.topology import Topology
from tests.webhooks.helpers import run_command as webhooks_command
from workers import amqp
from workers.ledger.commands import register as ledger_register
from workers.ledger.search import InvalidFilter, PaymentFilter, search_payments
from workers.webhooks.filters import DeliveryFilter, list_deliveries

from . import data
from .conftest import console_config, signed_in

Client = TestClient[Any, Any]


async def payments_command(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="payhook")
    ledger_register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = await args.handler(args, settings, console_config)
    return status


async def _ids(conn: Any, flt: PaymentFilter, limit: int = 50) -> list[str]:
    return [r["transaction_id"] for r in (await search_payments(conn, flt, limit=limit)).rows]


async def test_every_payment_filter(db: asyncpg.Connection) -> None:
    await data.ledger(db)
    # Spread creation times: PS-1 oldest … PS-3 newest.
    order = ["PS-1", "PS-2", "PC-1", "PC-2", "SP-1", "PS-3"]
    base = datetime(2026, 11, 1, tzinfo=UTC)
    for i, txid in enumerate(order):
        await db.execute(
            "UPDATE payments SET created_at = $2 WHERE transaction_id = $1",
            txid,
            base + timedelta(hours=i),
        )
    assert await _ids(db, PaymentFilter()) == order[::-1]
    assert await _ids(db, PaymentFilter(provider="paycore")) == ["PC-2", "PC-1"]
    assert await _ids(db, PaymentFilter(transaction_id="PC-1")) == ["PC-1"]
    assert await _ids(db, PaymentFilter(order_id="ORD-2")) == ["PS-2"]
    assert await _ids(db, PaymentFilter(merchant="shop")) == order[::-1]
    assert await _ids(db, PaymentFilter(merchant="nobody")) == []
    assert await _ids(db, PaymentFilter(state="refunded")) == ["PS-3"]
    assert await _ids(db, PaymentFilter(attention="any")) == ["SP-1", "PC-2"]
    assert await _ids(db, PaymentFilter(attention="held")) == ["SP-1"]
    assert await _ids(db, PaymentFilter(attention="conflict")) == ["PC-2"]
    assert await _ids(db, PaymentFilter(attention="mismatch")) == []
    since, until = base + timedelta(hours=1), base + timedelta(hours=3)
    assert await _ids(db, PaymentFilter(since=since, until=until)) == ["PC-1", "PS-2"]
    assert await _ids(db, PaymentFilter(provider="paysera", state="pending")) == ["PS-2"]
    with pytest.raises(InvalidFilter):
        PaymentFilter(state="lost")
    with pytest.raises(InvalidFilter):
        await search_payments(db, PaymentFilter(), after="not-a-cursor")


async def test_keyset_pages_visit_every_payment_once(db: asyncpg.Connection) -> None:
    await data.ledger(db)  # payments of one batch share created_at: ties broken by id
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await search_payments(db, PaymentFilter(), limit=2, after=after)
        seen.extend(r["transaction_id"] for r in page.rows)
        pages += 1
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert pages == 3
    assert sorted(seen) == sorted(["PS-1", "PS-2", "PS-3", "PC-1", "PC-2", "SP-1"])
    assert len(seen) == len(set(seen))
    assert seen == await _ids(db, PaymentFilter())


async def test_payments_list_command_uses_the_same_search(
    db: asyncpg.Connection, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await data.ledger(db)
    assert await payments_command(["payments", "list", "--attention", "--json"], settings) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert sorted(p["transaction_id"] for p in listed["payments"]) == ["PC-2", "SP-1"]
    assert listed["next"] is None
    argv = ["payments", "list", "--provider", "paysera", "--limit", "1"]
    assert await payments_command(argv, settings) == 0
    out = capsys.readouterr()
    assert "more: --after " in out.err
    cursor = out.err.split("more: --after ")[1].split()[0]
    assert await payments_command([*argv, "--after", cursor, "--json"], settings) == 0
    second = orjson.loads(capsys.readouterr().out)
    assert len(second["payments"]) == 1
    bad = ["payments", "list", "--after", "nonsense"]
    assert await payments_command(bad, settings) == 2


async def test_payment_pages_search_show_history_and_mask_raw_requests(
    console: Client, db: asyncpg.Connection
) -> None:
    ids = await data.ledger(db)
    await signed_in(console)
    found = await console.get("/console/payments", params={"transaction_id": "PS-1"})
    assert found.status == 200
    listing = await found.text()
    assert f"/console/payments/{ids['PS-1']}" in listing
    assert f"/console/payments/{ids['PS-2']}" not in listing
    bad = await console.get("/console/payments", params={"since": "yesterday-ish"})
    assert bad.status == 400
    assert "neither an ISO 8601 time nor an age" in await bad.text()

    page = await console.get(f"/console/payments/{ids['PS-1']}")
    assert page.status == 200
    html = await page.text()
    assert "succeeded" in html
    assert "ORD-1" in html
    assert "provider_clearing:paysera:main" in html  # postings
    assert "uid" in html
    assert "12345" in html
    for secret in ("payer@example.com", "payer%40example.com", "s3cr3tsignature",
                   data.SECRET_HEADER, "+37060012345", "37060012345"):  # fmt: skip
        assert secret not in html, secret
    assert html.count("[masked]") >= 4

    held = await console.get(f"/console/payments/{ids['SP-1']}")
    text = await held.text()
    assert "no_expectation" in text
    assert "register the order" in text  # what to do
    attention = await console.get("/console/attention", params={"kind": "conflict"})
    text = await attention.text()
    assert "PC-2" in text
    assert "SP-1" not in text
    missing = await console.get("/console/payments/00000000-0000-0000-0000-000000000000")
    assert missing.status == 404


async def test_webhooks_failed_lists_exactly_what_replay_failed_replays(
    database_url: str,
    db: asyncpg.Connection,
    settings: Settings,
    amqp_cleanup: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = await data.deliveries(database_url, db)
    config = console_config()
    await _declare(settings)
    assert await webhooks_command(["webhooks", "failed"], settings, config) == 0
    listing = capsys.readouterr().out
    listed = {name for name, e in events.items() if e in listing}
    assert listed == {"failing", "failed", "parked"}

    for argv, expected in [
        (["--state", "dead"], {"failed", "parked"}),
        (["--state", "failing"], {"failing"}),
        (["--merchant", "other"], {"parked"}),
        (["--endpoint", "http://127.0.0.1:9/hooks"], {"failing", "failed"}),
        (["--merchant", "other", "--endpoint", "http://127.0.0.1:9/hooks"], set()),
        (["--merchant", "shop", "--endpoint", "http://127.0.0.1:9/nobody"], set()),
        (["--until", "1h"], set()),
    ]:
        assert await webhooks_command(["webhooks", "failed", *argv], settings, config) == 0
        text = capsys.readouterr().out
        assert {name for name, e in events.items() if e in text} == expected, argv

    argv = ["webhooks", "replay", "--failed"]
    assert await webhooks_command(argv, settings, config) == 0
    assert "replayed 3 deliveries" in capsys.readouterr().out
    rounds = await db.fetch("SELECT event_id, round, state FROM webhook_deliveries")
    bumped = {r["event_id"] for r in rounds if r["round"] == 1}
    assert bumped == {events["failing"], events["failed"], events["parked"]}
    assert await _queue_depth(settings, Topology(settings.amqp_namespace).webhooks_queue) == 3
    # Replayed deliveries wait for attempt 1 (pending, attempts kept): still "failing".
    still = await list_deliveries(db, DeliveryFilter(states=("dead",)))
    assert still == []


async def test_console_replays_all_matching_after_a_confirmation(
    console: Client, database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    events = await data.deliveries(database_url, db)
    await _declare(settings)
    csrf = await signed_in(console)
    listing = await console.get("/console/deliveries", params={"state": "dead"})
    text = await listing.text()
    assert events["failed"] in text
    assert events["parked"] in text
    assert events["failing"] not in text
    assert events["delivered"] not in text
    confirm = await console.get("/console/deliveries/replay-all", params={"state": "dead"})
    assert "Replay 2 deliveries?" in await confirm.text()
    assert await db.fetchval("SELECT max(round) FROM webhook_deliveries") == 0  # nothing yet

    started = await console.post(
        "/console/deliveries/replay-all",
        data={"csrf": csrf, "state": "dead"},
        allow_redirects=False,
    )
    assert started.status == 303
    job_url = started.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    async with asyncio.timeout(20):
        while True:
            job = await (await console.get(f"/console/api/jobs/{job_id}")).json()
            if job["finished_at"] is not None:
                break
            await asyncio.sleep(0.05)
    assert (job["total"], job["done"], job["error"]) == (2, 2, None)
    page = await console.get(job_url)
    assert "finished" in await page.text()
    rows = await db.fetch("SELECT event_id FROM webhook_deliveries WHERE round = 1")
    assert {r["event_id"] for r in rows} == {events["failed"], events["parked"]}

    one = await console.post(
        "/console/deliveries/replay",
        data={
            "csrf": csrf,
            "event_id": events["failing"],
            "merchant": "shop",
            "back": "/console/deliveries?state=failing",
        },
        allow_redirects=False,
    )
    assert one.status == 303
    assert one.headers["Location"] == "/console/deliveries?state=failing&notice=replayed&n=1"
    assert (
        await db.fetchval(
            "SELECT round FROM webhook_deliveries WHERE event_id = $1", events["failing"]
        )
        == 1
    )
    assert await _queue_depth(settings, Topology(settings.amqp_namespace).webhooks_queue) == 3


async def test_overview_and_dead_letters(
    console: Client, database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    await data.ledger(db)
    await data.deliveries(database_url, db)
    await db.execute("UPDATE events SET published_at = now()")
    await db.execute(
        "UPDATE events SET published_at = NULL, created_at = now() - interval '90 s'"
        " WHERE id IN (SELECT id FROM events ORDER BY seq LIMIT 5)"
    )
    topology = Topology(settings.amqp_namespace)
    await _declare(settings)
    bodies = [orjson.dumps(data.with_raw(data.callback(data.Status.SUCCEEDED, f"D-{i}")).to_json())
              for i in range(3)]  # fmt: skip
    await _publish(settings, topology.ledger_dead_queue, [*bodies, b"\xffnot json"])
    await signed_in(console)

    doc = await (await console.get("/console/api/overview")).json()
    assert doc["attention"] == {"conflict": 1, "no_expectation": 1}
    assert doc["outbox_unpublished"] == 5
    oldest = datetime.fromisoformat(doc["outbox_oldest"])
    assert timedelta(seconds=89) < datetime.now(UTC) - oldest < timedelta(seconds=120)
    assert doc["queues"][topology.ledger_dead_queue] == {"messages": 4, "error": None}
    assert doc["queues"][topology.orders_dead_queue]["messages"] == 0
    trouble = {r["merchant"]: (r["failing"], r["failed"], r["parked"])
               for r in doc["deliveries_in_trouble"]}  # fmt: skip
    assert trouble == {"shop": (1, 1, 0), "other": (0, 0, 1)}
    assert set(doc["callbacks_per_s"]) == {"paysera", "paycore", "paysepro"}
    assert doc["callbacks_per_s"]["paycore"]["60"] == pytest.approx(3 / 60)
    live = await console.get("/console/overview/live")
    assert topology.ledger_dead_queue in await live.text()

    peek = await console.get("/console/dead-letters", params={"peek": "ledger"})
    html = await peek.text()
    assert "First 4 of 4" in html
    assert "D-0" in html
    assert "D-2" in html
    assert "s3cr3tsignature" not in html
    assert "payer@example.com" not in html
    assert "not JSON: not shown" in html
    assert await _queue_depth(settings, topology.ledger_dead_queue) == 4  # nothing taken
    # The peek again finds them all (nothing went missing).
    assert "First 4 of 4" in await (await console.get("/console/dead-letters?peek=ledger")).text()

    csrf = await signed_in(console)
    moved = await console.post(
        "/console/dead-letters/replay",
        data={"csrf": csrf, "queue": "ledger", "limit": "3"},
        allow_redirects=False,
    )
    assert moved.headers["Location"] == "/console/dead-letters?notice=moved&n=3"
    assert await _queue_depth(settings, topology.ledger_dead_queue) == 1
    assert await _queue_depth(settings, topology.ledger_queue) == 3


async def _declare(settings: Settings) -> None:
    connection = await amqp.connect(settings.amqp_url, name="console-test")
    try:
        await amqp.declare_topology(await connection.channel(), Topology(settings.amqp_namespace))
    finally:
        await connection.close()


async def _publish(settings: Settings, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, headers={"x-payhook-error": "boom"}), routing_key=queue
            )
    finally:
        await connection.close()


async def _queue_depth(settings: Settings, name: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_what_providers_send_is_escaped(console: Client, db: asyncpg.Connection) -> None:
    evil = '<script>alert("x")</script>'
    await data.apply(db, data.callback(data.Status.PENDING, "XSS-1", order_id=evil))
    await signed_in(console)
    listing = await (await console.get("/console/payments", params={"order_id": evil})).text()
    assert "XSS-1" in listing
    assert evil not in listing
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in listing
