"""The webhook worker against real RabbitMQ, Postgres and merchant HTTP servers.

Schedules are in fractions of a second so the suite stays fast; the delay queues are the same
ones the default schedule (0, 1 h, 3 h, 24 h) uses, only with shorter TTLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from contracts.statuses import Status
from tests.ports import refused_port
from tests.servers import BrokerJanitor

from .helpers import (
    MerchantServer,
    MerchantSpec,
    dead_messages,
    declare,
    delivery_states,
    fail_first,
    fetch,
    insert_events,
    make_config,
    make_event,
    make_settings,
    new_secret,
    publish_events,
    run_command,
    running_worker,
    verify_all,
    wait_until,
)

# Timestamps are taken on both sides of one loop; a millisecond absorbs float rounding only.
EPSILON = 0.001


def gaps(server: MerchantServer) -> list[float]:
    times = [r.at for r in server.requests]
    return [b - a for a, b in itertools.pairwise(times)]


async def attempt_rows(database_url: str, event_id: str) -> list[asyncpg.Record]:
    return await fetch(
        database_url,
        "SELECT * FROM webhook_attempts WHERE event_id = $1 ORDER BY round, attempt",
        event_id,
    )


async def test_fails_three_times_then_succeeds_after_exactly_four_attempts(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0, 0.3, 0.6, 0.9]
    secret = new_secret()
    async with MerchantServer(fail_first(3)).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (secret,))], schedule)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        event = make_event("shop")
        async with running_worker(make_settings(database_url, amqp_url, namespace), config):
            await publish_events(amqp_url, namespace, [event])
            await shop.wait_for(4)
            await wait_until(lambda: _state_is(database_url, event["id"], "delivered"), within=10)
            await asyncio.sleep(0.3)  # nothing further may come

    assert len(shop.requests) == 4
    for gap, delay in zip(gaps(shop), schedule[1:], strict=True):
        assert gap >= delay - EPSILON
    # The same id on every attempt, every one signed, the same payload every time.
    assert shop.webhook_ids() == [event["id"]] * 4
    bodies = verify_all(shop.requests, secret)
    assert all(body == event for body in bodies)
    assert len({r.body for r in shop.requests}) == 1
    assert all(r.headers["Content-Type"] == "application/json" for r in shop.requests)

    rows = await attempt_rows(database_url, event["id"])
    assert [r["attempt"] for r in rows] == [1, 2, 3, 4]
    assert [r["status_code"] for r in rows] == [500, 500, 500, 200]
    assert [r["next_action"] for r in rows] == ["retry", "retry", "retry", "done"]
    assert rows[0]["response_body"] == "answer 1"
    assert all(r["followed_up_at"] is not None for r in rows)
    started = [r["started_at"] for r in rows]
    assert started == sorted(started)
    delivery = await fetch(database_url, "SELECT * FROM webhook_deliveries")
    assert [(d["state"], d["attempts"]) for d in delivery] == [("delivered", 4)]


async def _state_is(database_url: str, event_id: str, state: str) -> bool:
    rows = await fetch(
        database_url, "SELECT state FROM webhook_deliveries WHERE event_id = $1", event_id
    )
    return bool(rows) and all(r["state"] == state for r in rows)


async def test_always_failing_is_parked_after_the_schedule_then_replay_delivers(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    capsys: pytest.CaptureFixture[str],
) -> None:
    schedule = [0, 0.2, 0.4]
    secret = new_secret()
    healthy = False

    async def respond(n: int, _: web.Request) -> web.StreamResponse:
        return web.Response(status=200 if healthy else 503, text="down for maintenance")

    async with MerchantServer(respond).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (secret,))], schedule)
        settings = make_settings(database_url, amqp_url, namespace)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        event = make_event("shop")
        await insert_events(database_url, [event])
        async with running_worker(settings, config):
            await publish_events(amqp_url, namespace, [event])
            await wait_until(lambda: _state_is(database_url, event["id"], "failed"), within=10)
            await asyncio.sleep(0.5)
            assert len(shop.requests) == len(schedule)

            dead = await dead_messages(amqp_url, namespace)
            assert [m.message_id for m in dead] == [event["id"]]
            assert dead[0].headers["x-payhook-dead-reason"] == "schedule exhausted"

            capsys.readouterr()
            assert await run_command(["webhooks", "failed"], settings, config) == 0
            listing = capsys.readouterr().out
            assert event["id"] in listing
            assert "failed" in listing

            assert await run_command(["webhooks", "attempts", event["id"]], settings, config) == 0
            history = capsys.readouterr().out
            assert history.count("503") == len(schedule)

            healthy = True
            assert await run_command(["webhooks", "replay", event["id"]], settings, config) == 0
            await shop.wait_for(len(schedule) + 1)
            await wait_until(lambda: _state_is(database_url, event["id"], "delivered"))

    # Replay: same id, same payload bytes, fresh schedule (round 1, attempt 1).
    assert shop.webhook_ids() == [event["id"]] * (len(schedule) + 1)
    assert len({r.body for r in shop.requests}) == 1
    verify_all(shop.requests, secret)
    rows = await attempt_rows(database_url, event["id"])
    assert [(r["round"], r["attempt"]) for r in rows] == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert [r["next_action"] for r in rows] == ["retry", "retry", "dead", "done"]


async def test_gone_disables_the_endpoint_and_enable_plus_replay_loses_nothing(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    capsys: pytest.CaptureFixture[str],
) -> None:
    schedule = [0, 0.2]
    secret = new_secret()
    async with MerchantServer(fail_first(1, status=410)).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (secret,))], schedule)
        settings = make_settings(database_url, amqp_url, namespace)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        events = [make_event("shop") for _ in range(4)]
        ids = {e["id"] for e in events}
        await insert_events(database_url, events)
        async with running_worker(settings, config):
            await publish_events(amqp_url, namespace, events[:1])
            await wait_until(lambda: _state_is(database_url, events[0]["id"], "parked"))
            endpoint = await fetch(database_url, "SELECT * FROM webhook_endpoints")
            assert [(e["merchant"], e["disabled_reason"]) for e in endpoint] == [
                ("shop", "410 Gone")
            ]

            # While disabled: no calls, every delivery parked (kept), none dropped.
            await publish_events(amqp_url, namespace, events[1:])
            await wait_until(lambda: _all_states(database_url, ids, "parked"), within=10)
            assert len(shop.requests) == 1

            capsys.readouterr()
            assert await run_command(["webhooks", "enable", "shop"], settings, config) == 0
            assert "4 parked deliveries" in capsys.readouterr().err
            argv = ["webhooks", "replay", "--failed", "--merchant", "shop"]
            assert await run_command(argv, settings, config) == 0
            captured = capsys.readouterr()
            assert "replayed 4 deliveries" in captured.out
            assert "replay [" in captured.err  # the progress bar
            await shop.wait_for(5)
            await wait_until(lambda: _all_states(database_url, ids, "delivered"))

    assert set(shop.webhook_ids()[1:]) == ids
    verify_all(shop.requests, secret)
    assert len(await dead_messages(amqp_url, namespace)) == 4  # one copy per parked delivery


async def _all_states(database_url: str, ids: set[str], state: str) -> bool:
    states = await delivery_states(database_url)
    return {e for (e, _), s in states.items() if s == state} == ids


@pytest.mark.parametrize(
    ("max_in_flight", "prefetch", "backlog"),
    [
        (2, 64, 8),  # the slow endpoint's backlog fits in the worker's prefetch
        # More than the worker prefetches: were the slow deliveries to wait for their slot
        # while holding their messages, all 4 would be slow ones and the fast merchant would
        # wait for the slow one to answer. The excess goes back to the broker instead.
        (1, 4, 12),
    ],
)
async def test_a_hanging_endpoint_does_not_hold_up_a_healthy_one(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    max_in_flight: int,
    prefetch: int,
    backlog: int,
) -> None:
    schedule = [0, 60]
    release = asyncio.Event()

    async def hang(_: int, __: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    async with (
        MerchantServer(hang).serving() as slow,
        MerchantServer().serving() as fast,
    ):
        slow_options = {"max_in_flight": max_in_flight, "timeout_s": 60}
        config = make_config(
            [
                MerchantSpec("slow", slow.url, (new_secret(),), slow_options),
                MerchantSpec("fast", fast.url, (new_secret(),)),
            ],
            schedule,
        )
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        settings = replace(
            make_settings(database_url, amqp_url, namespace), webhook_prefetch=prefetch
        )
        slow_events = [make_event("slow") for _ in range(backlog)]
        try:
            async with running_worker(settings, config):
                await publish_events(amqp_url, namespace, slow_events)
                await slow.wait_for(max_in_flight)
                await publish_events(amqp_url, namespace, [make_event("fast") for _ in range(5)])
                await fast.wait_for(5, within=10)
                # Every fast delivery landed while the slow endpoint still holds its calls,
                # and the slow one never got more than its max_in_flight at once.
                assert not release.is_set()
                assert len(slow.requests) == max_in_flight
                release.set()
                await slow.wait_for(backlog, within=30)

                async def slow_ones_delivered() -> bool:
                    states = await delivery_states(database_url)
                    return {s for (_, m), s in states.items() if m == "slow"} == {"delivered"}

                await wait_until(slow_ones_delivered)
        finally:
            release.set()
    # Each slow delivery was attempted once: hops through the busy queue are not attempts.
    assert sorted(slow.webhook_ids()) == sorted(str(e["id"]) for e in slow_events)
    attempts = await fetch(
        database_url,
        "SELECT event_id, count(*) AS n FROM webhook_attempts WHERE merchant = 'slow'"
        " GROUP BY event_id",
    )
    assert {r["event_id"]: r["n"] for r in attempts} == {str(e["id"]): 1 for e in slow_events}


async def test_a_busy_but_answering_endpoint_keeps_its_backlog_without_hops(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    """Past the saturation bound, a merchant that keeps answering is not sent round the busy
    hop (which made a fast merchant's backlog seconds late): its deliveries wait their turn."""
    schedule = [0, 60]

    async def answer_soon(_: int, __: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)  # the merchant's own latency: busy, never stuck
        return web.Response(status=200)

    async with MerchantServer(answer_soon).serving() as shop:
        config = make_config(
            [MerchantSpec("shop", shop.url, (new_secret(),), {"max_in_flight": 1})], schedule
        )
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        # Prefetch 8: saturated at 4 waiting or running, so 4 of every 8 would have hopped.
        settings = replace(make_settings(database_url, amqp_url, namespace), webhook_prefetch=8)
        events = [make_event("shop") for _ in range(40)]
        await publish_events(amqp_url, namespace, events)
        with capture_logs() as logs:
            async with running_worker(settings, config):
                await shop.wait_for(len(events), within=30)
    hops = [entry for entry in logs if entry["event"] == "webhooks.deferred_busy"]
    assert hops == []
    assert sorted(shop.webhook_ids()) == sorted(str(e["id"]) for e in events)


async def test_rotation_sends_both_signatures_and_each_secret_verifies(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0]
    new, old = new_secret(), new_secret()
    async with MerchantServer().serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new, old))], schedule)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        events = [make_event("shop") for _ in range(2)]
        async with running_worker(make_settings(database_url, amqp_url, namespace), config):
            await publish_events(amqp_url, namespace, events)
            await shop.wait_for(2)

    for request in shop.requests:
        signatures = request.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2
        assert all(s.startswith("v1,") for s in signatures)
    assert verify_all(shop.requests, new) == verify_all(shop.requests, old)
    assert sorted(shop.webhook_ids()) == sorted(e["id"] for e in events)


async def test_retry_after_later_than_the_next_step_is_honoured(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0, 0.1, 1.0]

    async def busy_once(n: int, _: web.Request) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=200)

    async with MerchantServer(busy_once).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], schedule)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        async with running_worker(make_settings(database_url, amqp_url, namespace), config):
            await publish_events(amqp_url, namespace, [make_event("shop")])
            await shop.wait_for(2)

    # The next step (0.1 s) is earlier than asked, so the smallest step >= 1 s was used.
    assert gaps(shop)[0] >= 1.0 - EPSILON


async def test_open_breaker_skips_calls_and_moves_deliveries_on(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0, 0.2]
    extra: dict[str, Any] = {"max_in_flight": 1, "breaker_threshold": 2, "breaker_cooldown_s": 60}
    async with MerchantServer(fail_first(100)).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),), extra)], schedule)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        events = [make_event("shop") for _ in range(3)]
        ids = {e["id"] for e in events}
        async with running_worker(make_settings(database_url, amqp_url, namespace), config):
            await publish_events(amqp_url, namespace, events)
            await wait_until(lambda: _all_states(database_url, ids, "failed"), within=10)

    # Two failures opened the breaker; everything after was skipped, not stuck.
    assert len(shop.requests) == 2
    rows = await fetch(database_url, "SELECT error_class FROM webhook_attempts")
    classes = sorted(str(r["error_class"]) for r in rows)
    assert classes == ["None", "None"] + ["circuit_open"] * 4


async def test_unsubscribed_events_are_skipped(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0]
    extra = {"events": ["payhook.payment.refunded"]}
    async with MerchantServer().serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),), extra)], schedule)
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        wanted = make_event("shop", status=Status.REFUNDED)
        async with running_worker(make_settings(database_url, amqp_url, namespace), config):
            await publish_events(amqp_url, namespace, [make_event("shop"), wanted])
            await shop.wait_for(1)
            await asyncio.sleep(0.3)

    assert shop.webhook_ids() == [wanted["id"]]
    assert list((await delivery_states(database_url)).values()) == ["delivered"]


async def test_timeouts_refused_connections_and_redirects_are_failures(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    schedule = [0]
    release = asyncio.Event()

    async def stall(_: int, __: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    async def redirect(_: int, __: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    async with (
        contextlib.AsyncExitStack() as stack,
        MerchantServer(stall).serving() as slow,
        MerchantServer(redirect).serving() as moved,
    ):
        # Held for the whole test (tests/ports.py says why).
        closed_url = f"http://127.0.0.1:{stack.enter_context(refused_port())}/hooks"
        config = make_config(
            [
                MerchantSpec("slow", slow.url, (new_secret(),), {"timeout_s": 0.3}),
                MerchantSpec("gone", closed_url, (new_secret(),)),
                MerchantSpec("moved", moved.url, (new_secret(),)),
            ],
            schedule,
        )
        await declare(amqp_url, namespace, schedule, amqp_cleanup)
        ids = {m: make_event(m) for m in ("slow", "gone", "moved")}
        try:
            async with running_worker(make_settings(database_url, amqp_url, namespace), config):
                await publish_events(amqp_url, namespace, ids.values())
                await wait_until(
                    lambda: _all_states(database_url, {e["id"] for e in ids.values()}, "failed")
                )
        finally:
            release.set()

    rows = await fetch(
        database_url, "SELECT merchant, status_code, error_class FROM webhook_attempts"
    )
    outcomes = {r["merchant"]: (r["status_code"], r["error_class"]) for r in rows}
    assert outcomes == {
        "slow": (None, "timeout"),
        "gone": (None, "connection_error"),
        "moved": (307, None),
    }
