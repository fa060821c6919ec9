"""The overdue sweeper (workers/webhooks/sweeper.py) and the attempt claims it needs.

A retry whose delay-queue message the broker is late with (RabbitMQ 3.10 after a node loss)
is re-published from Postgres; the late copy, whenever it comes, and a copy processed at the
same moment by another worker, make no second attempt. Real Postgres, RabbitMQ and merchant
HTTP servers. The schedule's second step is an hour, so the delay queue never hands its
message back by itself during a test: making a delivery overdue is an UPDATE of its
``next_attempt_at``, and a "late copy" is that message taken out of the delay queue by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web

from contracts.config import Config, Settings
from contracts.topology import Topology
from tests.servers import BrokerJanitor
from workers import db as workers_db
from workers.webhooks.delivery import EndpointRegistry
from workers.webhooks.messages import Publisher
from workers.webhooks.sweeper import sweep_once

from .helpers import (
    BUSY_DELAY_S,
    MerchantServer,
    MerchantSpec,
    declare,
    fail_first,
    fetch,
    insert_events,
    make_config,
    make_event,
    make_settings,
    new_secret,
    publish_events,
    running_worker,
    wait_until,
)

SCHEDULE = [0, 3600, 10800]  # attempt 2 waits an hour: only the sweeper brings it early


def sweeper_settings(database_url: str, amqp_url: str, namespace: str) -> Settings:
    # A short grace and interval so a test waits tenths of a second, and a long recheck so a
    # delivery is re-published at most once per test (each copy counted exactly).
    return replace(
        make_settings(database_url, amqp_url, namespace),
        webhook_overdue_s=0.2,
        webhook_sweep_interval_s=0.1,
        webhook_overdue_recheck_s=600.0,
    )


async def attempts(database_url: str, event_id: str) -> list[tuple[int, int | None, bool]]:
    rows = await fetch(
        database_url,
        "SELECT attempt, status_code, finished_at IS NOT NULL AS finished"
        " FROM webhook_attempts WHERE event_id = $1 ORDER BY attempt",
        event_id,
    )
    return [(r["attempt"], r["status_code"], r["finished"]) for r in rows]


async def state_of(database_url: str, event_id: str) -> str | None:
    rows = await fetch(
        database_url, "SELECT state FROM webhook_deliveries WHERE event_id = $1", event_id
    )
    return rows[0]["state"] if rows else None


async def make_overdue(database_url: str, event_id: str, by_s: float = 3600.0) -> None:
    """What the broker being late looks like in Postgres: the attempt was due a while ago."""
    await fetch(
        database_url,
        "UPDATE webhook_deliveries SET next_attempt_at = now() - make_interval(secs => $2)"
        " WHERE event_id = $1",
        event_id,
        by_s,
    )


async def first_attempt_failed(
    settings: Settings, config: Config, shop: MerchantServer, event: Mapping[str, Any]
) -> None:
    """Run a worker without sweeper until attempt 1 failed and its retry waits an hour."""
    async with running_worker(replace(settings, webhook_overdue_s=0.0), config):
        await publish_events(settings.amqp_url, settings.amqp_namespace, [event])
        await shop.wait_for(1)
        await wait_until(lambda: _followed_up(settings.database_url, event["id"], 1))


async def _followed_up(database_url: str, event_id: str, attempt: int) -> bool:
    rows = await fetch(
        database_url,
        "SELECT 1 FROM webhook_attempts WHERE event_id = $1 AND attempt = $2"
        " AND followed_up_at IS NOT NULL",
        event_id,
        attempt,
    )
    return bool(rows)


@dataclass
class Broker:
    channel: AbstractChannel
    topology: Topology

    async def take_all(self, queue: str) -> list[AbstractIncomingMessage]:
        q = await self.channel.get_queue(queue)
        out = []
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            out.append(message)
        return out

    async def take_one(self, queue: str) -> AbstractIncomingMessage:
        """Wait for one message (a dead-lettered hop arrives when its TTL runs out)."""
        q = await self.channel.get_queue(queue)
        async with asyncio.timeout(20):
            while (message := await q.get(fail=False, no_ack=True)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return message


@contextlib.asynccontextmanager
async def broker(amqp_url: str, namespace: str) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield Broker(channel, Topology(namespace))
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings, config: Config, channel: AbstractChannel
) -> AsyncIterator[Any]:
    """A ``WebhookWorker`` as one process has it (own locks, pool, endpoints), not consuming:
    the test hands it message bodies, as a second process would be handed the twin copy."""
    from workers.webhooks.consumer import WebhookWorker

    pool = await workers_db.create_pool(settings.database_url)
    endpoints = EndpointRegistry(config.merchants)
    stop = asyncio.Event()
    publisher = Publisher(channel, Topology(settings.amqp_namespace), settings.publish_timeout_s)
    worker = WebhookWorker(
        config, pool, publisher, endpoints, stop, settings.webhook_busy_delay_s, prefetch=256
    )
    worker.claim_twins = True  # as run_webhook_worker sets it while its sweeper runs
    try:
        yield worker
    finally:
        await endpoints.close()
        await pool.close()


# ------------------------------------------------------------------------------- tests


async def test_a_retry_whose_delay_message_never_comes_back_is_delivered_by_the_sweeper_once(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    settings = sweeper_settings(database_url, amqp_url, namespace)
    async with MerchantServer(fail_first(1)).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        await declare(amqp_url, namespace, SCHEDULE, amqp_cleanup)
        event = make_event("shop")
        await insert_events(database_url, [event])
        await first_attempt_failed(settings, config, shop, event)
        async with broker(amqp_url, namespace) as b:
            # The retry is lost to the broker for good: only Postgres remembers it.
            held = await b.take_all(b.topology.webhooks_retry_queue(3600))
            assert [m.headers["x-payhook-attempt"] for m in held] == [2]
        await make_overdue(database_url, event["id"])

        async with running_worker(settings, config):
            await shop.wait_for(2)
            await wait_until(lambda: _is(database_url, event["id"], "delivered"))

    assert len(shop.requests) == 2
    assert shop.webhook_ids() == [event["id"]] * 2
    assert await attempts(database_url, event["id"]) == [(1, 500, True), (2, 200, True)]


async def test_the_late_delay_copy_after_the_sweepers_delivery_makes_no_second_attempt(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    settings = sweeper_settings(database_url, amqp_url, namespace)
    async with MerchantServer(fail_first(1)).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        await declare(amqp_url, namespace, SCHEDULE, amqp_cleanup)
        event = make_event("shop")
        await insert_events(database_url, [event])
        await first_attempt_failed(settings, config, shop, event)
        await make_overdue(database_url, event["id"])
        async with running_worker(settings, config):
            await shop.wait_for(2)
            await wait_until(lambda: _is(database_url, event["id"], "delivered"))

        async with broker(amqp_url, namespace) as b:
            # The broker finally hands the retry back: the same message, an hour "late".
            (late,) = await b.take_all(b.topology.webhooks_retry_queue(3600))
            async with worker_process(settings, config, b.channel) as worker:
                await worker.process(late.body, late.headers)  # returns when it may be acked
            leftovers = await b.take_all(b.topology.webhooks_queue)

    assert len(shop.requests) == 2
    assert await attempts(database_url, event["id"]) == [(1, 500, True), (2, 200, True)]
    assert leftovers == []  # nothing went round again either


async def test_both_copies_at_once_in_two_workers_make_one_attempt(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    settings = sweeper_settings(database_url, amqp_url, namespace)
    release = asyncio.Event()

    async def fail_then_hold(n: int, _: web.Request) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=500)
        await release.wait()  # the winner stays mid-request until the other copy is settled
        return web.Response(status=200)

    async with MerchantServer(fail_then_hold).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        await declare(amqp_url, namespace, SCHEDULE, amqp_cleanup)
        event = make_event("shop")
        await insert_events(database_url, [event])
        await first_attempt_failed(settings, config, shop, event)
        await make_overdue(database_url, event["id"])

        async with broker(amqp_url, namespace) as b:
            (delay_copy,) = await b.take_all(b.topology.webhooks_retry_queue(3600))
            pool = await workers_db.create_pool(database_url)
            try:
                publisher = Publisher(b.channel, b.topology, 10.0)
                swept = await sweep_once(pool, publisher, overdue_s=0.2, recheck_s=600)
            finally:
                await pool.close()
            assert (swept.published, swept.failed) == (1, 0)
            (sweeper_copy,) = await b.take_all(b.topology.webhooks_queue)
            assert sweeper_copy.body == delay_copy.body
            assert sweeper_copy.headers == delay_copy.headers  # the retry path's very message

            async with (
                worker_process(settings, config, b.channel) as one,
                worker_process(settings, config, b.channel) as two,
            ):
                tasks = {
                    asyncio.create_task(one.process(sweeper_copy.body, sweeper_copy.headers)),
                    asyncio.create_task(two.process(delay_copy.body, delay_copy.headers)),
                }
                # The loser cannot wait on the winner (still mid-request): it settles first.
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                assert len(done) == 1
                assert len(pending) == 1
                done.pop().result()
                assert len(shop.requests) == 2  # the winner's call; the loser made none
                release.set()
                await pending.pop()

                # The loser handed its copy back through the busy hop, as the same step; when
                # it comes back it finds the attempt recorded and does nothing.
                hop = await b.take_one(b.topology.webhooks_queue)
                assert hop.headers["x-payhook-attempt"] == 2
                await one.process(hop.body, hop.headers)
                assert await b.take_all(b.topology.webhooks_queue) == []
                assert await b.take_all(b.topology.webhooks_retry_queue(BUSY_DELAY_S)) == []

    assert len(shop.requests) == 2
    assert await attempts(database_url, event["id"]) == [(1, 500, True), (2, 200, True)]
    assert await state_of(database_url, event["id"]) == "delivered"


async def test_only_overdue_pending_deliveries_are_swept(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    await declare(amqp_url, namespace, SCHEDULE, amqp_cleanup)
    events = {name: make_event("shop") for name in _ROWS}
    await insert_events(database_url, events.values())
    for name, (state, due_in_s) in _ROWS.items():
        event_id = events[name]["id"]
        await db.execute(
            "INSERT INTO webhook_deliveries (event_id, merchant, event_type, state, attempts,"
            " next_attempt_at) VALUES ($1, 'shop', $2, $3, 1,"
            " now() + make_interval(secs => $4))",
            event_id,
            events[name]["type"],
            state,
            due_in_s,
        )
        await db.execute(
            "INSERT INTO webhook_attempts (event_id, merchant, round, attempt, finished_at,"
            " status_code, next_action, followed_up_at) VALUES ($1, 'shop', 0, 1, now(), 500,"
            " 'retry', now())",
            event_id,
        )

    async with broker(amqp_url, namespace) as b:
        pool = await workers_db.create_pool(database_url)
        try:
            publisher = Publisher(b.channel, b.topology, 10.0)
            swept = await sweep_once(pool, publisher, overdue_s=15.0, recheck_s=60.0)
            again = await sweep_once(pool, publisher, overdue_s=15.0, recheck_s=60.0)
        finally:
            await pool.close()
        published = await b.take_all(b.topology.webhooks_queue)

    assert (swept.published, swept.skipped, swept.failed) == (1, 0, 0)
    assert [m.message_id for m in published] == [events["overdue"]["id"]]
    assert published[0].headers["x-payhook-attempt"] == 2
    assert published[0].headers["x-payhook-merchant"] == "shop"
    # The one it took is marked: the next sweep leaves it alone for the recheck interval.
    assert again.published == 0
    marked = await db.fetchval(
        "SELECT next_attempt_at > now() + interval '50 seconds' FROM webhook_deliveries"
        " WHERE event_id = $1",
        events["overdue"]["id"],
    )
    assert marked is True


_ROWS = {
    # name: (state, next attempt due in … seconds; negative: overdue by that much)
    "overdue": ("pending", -3600.0),
    "due_within_grace": ("pending", -5.0),
    "due_later": ("pending", 3600.0),
    "delivered": ("delivered", -3600.0),
    "failed": ("failed", -3600.0),
    "parked": ("parked", -3600.0),
}


async def test_two_sweepers_at_once_publish_each_overdue_delivery_once(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    await declare(amqp_url, namespace, SCHEDULE, amqp_cleanup)
    events = [make_event("shop") for _ in range(60)]
    await insert_events(database_url, events)
    await db.executemany(
        "INSERT INTO webhook_deliveries (event_id, merchant, event_type, round, state,"
        " next_attempt_at) VALUES ($1, 'shop', $2, 1, 'pending', now() - interval '1 hour')",
        [(e["id"], e["type"]) for e in events],
    )
    async with broker(amqp_url, namespace) as b:
        pools = [await workers_db.create_pool(database_url) for _ in range(2)]
        try:
            publisher = Publisher(b.channel, b.topology, 10.0)
            results = await asyncio.gather(
                *(
                    sweep_once(p, publisher, overdue_s=1.0, recheck_s=60.0, batch=7)
                    for p in pools
                    for _ in range(10)
                )
            )
        finally:
            for p in pools:
                await p.close()
        published = await b.take_all(b.topology.webhooks_queue)

    assert sum(r.published for r in results) == 60
    ids = [str(m.message_id) for m in published]
    assert sorted(ids) == sorted(e["id"] for e in events)  # each once
    # A replay's round with no attempt yet: attempt 1 of that round.
    assert {(m.headers["x-payhook-round"], m.headers["x-payhook-attempt"]) for m in published} == {
        (1, 1)
    }


async def _is(database_url: str, event_id: str, state: str) -> bool:
    return await state_of(database_url, event_id) == state
