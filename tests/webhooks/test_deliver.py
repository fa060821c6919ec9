"""``Deliverer.deliver`` called directly: each step it decides, against real Postgres,
RabbitMQ and a merchant HTTP server, without a consumer in between.

The consumer tests (test_delivery.py, test_crash.py) prove the same behaviour through the
queue; these pin down which step a message takes and what each one leaves behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel

from contracts.config import Config
from contracts.events import CloudEvent
from contracts.topology import HEADER_ATTEMPT, Topology
from tests.servers import BrokerJanitor
from workers import db as workers_db
from workers.webhooks import store
from workers.webhooks.deliver import Delivered, Deliverer, DeliveryStore, Step
from workers.webhooks.delivery import AttemptResult, EndpointRegistry
from workers.webhooks.messages import HEADER_DEAD_REASON, Job, Publisher
from workers.webhooks.retry import Action, Outcome, plan_next

from .helpers import (
    MerchantServer,
    MerchantSpec,
    dead_messages,
    declare,
    delivery_states,
    fail_first,
    make_config,
    make_event,
    new_secret,
    verify_all,
)

# Long enough that a retry stays in its delay queue while the test looks at it.
SCHEDULE = [0, 600]


@dataclass
class Core:
    deliverer: Deliverer
    publisher: Publisher
    channel: AbstractChannel
    topology: Topology

    async def deliver(self, job: Job) -> Delivered:
        return await self.deliverer.deliver(job, self.publisher)

    async def retry_messages(self) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.get_queue(self.topology.webhooks_retry_queue(SCHEDULE[1]))
        out = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            out.append(message)
        return out


@contextlib.asynccontextmanager
async def core(
    database_url: str, amqp_url: str, namespace: str, janitor: BrokerJanitor, config: Config
) -> AsyncIterator[Core]:
    await declare(amqp_url, namespace, SCHEDULE, janitor)
    topology = Topology(namespace)
    pool = await workers_db.create_pool(database_url)
    endpoints = EndpointRegistry(config.merchants)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        publisher = Publisher(channel, topology, timeout_s=10.0)
        deliverer = Deliverer(config, DeliveryStore(pool), endpoints)
        yield Core(deliverer, publisher, channel, topology)
    finally:
        await connection.close()
        await endpoints.close()
        await pool.close()


def job_for(merchant: str, round_: int = 0, attempt: int = 1) -> Job:
    event = CloudEvent.from_dict(make_event(merchant))
    return Job(event, merchant, round_, attempt, "corr-1")


async def attempts(conn: asyncpg.Connection, event_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT attempt, status_code, next_action, followed_up_at IS NOT NULL AS followed_up"
        " FROM webhook_attempts WHERE event_id = $1 ORDER BY attempt",
        event_id,
    )


async def test_a_delivered_attempt_is_recorded_and_a_copy_of_its_message_is_a_duplicate(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    secret = new_secret()
    async with MerchantServer().serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (secret,))], SCHEDULE)
        async with core(database_url, amqp_url, namespace, amqp_cleanup, config) as it:
            job = job_for("shop")
            first = await it.deliver(job)
            again = await it.deliver(job)  # the broker redelivered it, or a twin came
    assert first.step is Step.ATTEMPTED
    assert first.plan is not None
    assert first.plan.action is Action.DONE
    assert first.result is not None
    assert first.result.status_code == 200
    assert (again.step, len(shop.requests)) == (Step.DUPLICATE, 1)
    assert [body["id"] for body in verify_all(shop.requests, secret)] == [job.event_id]
    assert shop.requests[0].body == job.event.canonical_json()
    assert await delivery_states(database_url) == {(job.event_id, "shop"): "delivered"}
    assert [tuple(r) for r in await attempts(db, job.event_id)] == [(1, 200, "done", True)]


async def test_a_failed_attempt_publishes_the_next_step_before_it_returns(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    async with MerchantServer(fail_first(1, status=503)).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        async with core(database_url, amqp_url, namespace, amqp_cleanup, config) as it:
            job = job_for("shop")
            done = await it.deliver(job)
            waiting = await it.retry_messages()
    assert done.step is Step.ATTEMPTED
    assert done.plan is not None
    assert (done.plan.action, done.plan.next_attempt, done.plan.delay) == (Action.RETRY, 2, 600)
    # Confirmed by the broker by the time deliver returned: the consumer may ack at once.
    assert [(m.message_id, m.headers[HEADER_ATTEMPT]) for m in waiting] == [(job.event_id, 2)]
    assert [tuple(r) for r in await attempts(db, job.event_id)] == [(1, 503, "retry", True)]
    assert await delivery_states(database_url) == {(job.event_id, "shop"): "pending"}


async def test_a_decision_recorded_but_not_carried_out_is_carried_out_by_the_next_copy(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    """A worker crashed after writing the attempt and before publishing its retry: the
    redelivered message publishes the retry and makes no second attempt."""
    async with MerchantServer().serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        async with core(database_url, amqp_url, namespace, amqp_cleanup, config) as it:
            job = job_for("shop")
            failed = AttemptResult(Outcome.FAILED, status_code=500, duration_ms=3)
            plan = plan_next(1, failed.outcome, config.webhook_schedule, None)
            await it.deliverer.deliveries.record(job, failed, plan)  # then the crash
            assert [tuple(r) for r in await attempts(db, job.event_id)] == [
                (1, 500, "retry", False)
            ]
            resumed = await it.deliver(job)
            waiting = await it.retry_messages()
    assert (resumed.step, resumed.plan) == (Step.RESUMED, plan)
    assert shop.requests == []
    assert [(m.message_id, m.headers[HEADER_ATTEMPT]) for m in waiting] == [(job.event_id, 2)]
    assert [tuple(r) for r in await attempts(db, job.event_id)] == [(1, 500, "retry", True)]


async def test_a_message_of_a_superseded_round_does_nothing(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    async with MerchantServer().serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        async with core(database_url, amqp_url, namespace, amqp_cleanup, config) as it:
            job = job_for("shop", round_=0)
            # An operator replayed it meanwhile: the delivery is in round 1.
            await store.open_delivery(db, job.event_id, "shop", job.event_type, 1)
            stale = await it.deliver(job)
            replayed = await it.deliver(job_for_event(job, round_=1))
    assert stale.step is Step.STALE
    assert replayed.step is Step.ATTEMPTED
    assert [r.headers["webhook-id"] for r in shop.requests] == [job.event_id]  # round 1's only
    assert await db.fetchval("SELECT round FROM webhook_attempts") == 1


def job_for_event(job: Job, round_: int) -> Job:
    return Job(job.event, job.merchant, round_, 1, job.correlation_id)


async def test_a_disabled_endpoint_parks_the_delivery_and_sends_nothing(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
) -> None:
    async with MerchantServer().serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (new_secret(),))], SCHEDULE)
        await store.disable_endpoint(db, "shop", "operator: merchant asked")
        async with core(database_url, amqp_url, namespace, amqp_cleanup, config) as it:
            job = job_for("shop")
            parked = await it.deliver(job)
    dead = await dead_messages(amqp_url, namespace)
    assert parked.step is Step.PARKED
    assert shop.requests == []
    assert await delivery_states(database_url) == {(job.event_id, "shop"): "parked"}
    assert [(m.message_id, m.headers[HEADER_DEAD_REASON]) for m in dead] == [
        (job.event_id, "parked: endpoint disabled: operator: merchant asked")
    ]
    assert await attempts(db, job.event_id) == []
