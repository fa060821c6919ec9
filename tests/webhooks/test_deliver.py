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
import pytest
from aio_pika.abc import AbstractChannel

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
    Responder,
    dead_messages,
    declare,
    delivery_states,
    fail_first,
    make_config,
    make_event,
    new_secret,
    ok,
    verify_all,
)

# Long enough that a retry stays in its delay queue while the test looks at it.
SCHEDULE = [0, 600]


@dataclass
class Servers:
    database_url: str
    amqp_url: str
    namespace: str
    janitor: BrokerJanitor


@pytest.fixture
def servers(
    database_url: str, amqp_url: str, namespace: str, amqp_cleanup: BrokerJanitor
) -> Servers:
    return Servers(database_url, amqp_url, namespace, amqp_cleanup)


@dataclass
class Core:
    """A ``Deliverer`` for one merchant ``shop``, with a confirming publisher."""

    deliverer: Deliverer
    publisher: Publisher
    channel: AbstractChannel
    topology: Topology
    shop: MerchantServer

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
    servers: Servers, respond: Responder = ok, secret: str | None = None
) -> AsyncIterator[Core]:
    await declare(servers.amqp_url, servers.namespace, SCHEDULE, servers.janitor)
    topology = Topology(servers.namespace)
    async with MerchantServer(respond).serving() as shop:
        config = make_config([MerchantSpec("shop", shop.url, (secret or new_secret(),))], SCHEDULE)
        pool = await workers_db.create_pool(servers.database_url)
        endpoints = EndpointRegistry(config.merchants)
        connection = await aio_pika.connect(servers.amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            publisher = Publisher(channel, topology, timeout_s=10.0)
            deliverer = Deliverer(config, DeliveryStore(pool), endpoints)
            yield Core(deliverer, publisher, channel, topology, shop)
        finally:
            await connection.close()
            await endpoints.close()
            await pool.close()


def job_for(merchant: str, round_: int = 0) -> Job:
    return Job(CloudEvent.from_dict(make_event(merchant)), merchant, round_, 1, "corr-1")


async def attempts(conn: asyncpg.Connection, event_id: str) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT attempt, status_code, next_action, followed_up_at IS NOT NULL AS followed_up"
        " FROM webhook_attempts WHERE event_id = $1 ORDER BY attempt",
        event_id,
    )
    return [tuple(row) for row in rows]


async def test_a_delivered_attempt_is_recorded_and_a_copy_of_its_message_is_a_duplicate(
    servers: Servers, db: asyncpg.Connection
) -> None:
    secret = new_secret()
    async with core(servers, secret=secret) as it:
        job = job_for("shop")
        first = await it.deliver(job)
        again = await it.deliver(job)  # the broker redelivered it, or a twin came
    assert first.step is Step.ATTEMPTED
    assert first.plan is not None
    assert first.plan.action is Action.DONE
    assert first.result is not None
    assert first.result.status_code == 200
    assert (again.step, len(it.shop.requests)) == (Step.DUPLICATE, 1)
    assert [body["id"] for body in verify_all(it.shop.requests, secret)] == [job.event_id]
    assert it.shop.requests[0].body == job.event.canonical_json()
    assert await delivery_states(servers.database_url) == {(job.event_id, "shop"): "delivered"}
    assert await attempts(db, job.event_id) == [(1, 200, "done", True)]


async def test_a_failed_attempt_publishes_the_next_step_before_it_returns(
    servers: Servers, db: asyncpg.Connection
) -> None:
    async with core(servers, fail_first(1, status=503)) as it:
        job = job_for("shop")
        done = await it.deliver(job)
        waiting = await it.retry_messages()
    assert done.step is Step.ATTEMPTED
    assert done.plan is not None
    assert (done.plan.action, done.plan.next_attempt, done.plan.delay) == (Action.RETRY, 2, 600)
    # Confirmed by the broker by the time deliver returned: the consumer may ack at once.
    assert [(m.message_id, m.headers[HEADER_ATTEMPT]) for m in waiting] == [(job.event_id, 2)]
    assert await attempts(db, job.event_id) == [(1, 503, "retry", True)]
    assert await delivery_states(servers.database_url) == {(job.event_id, "shop"): "pending"}


async def test_a_decision_recorded_but_not_carried_out_is_carried_out_by_the_next_copy(
    servers: Servers, db: asyncpg.Connection
) -> None:
    """A worker crashed after writing the attempt and before publishing its retry: the
    redelivered message publishes the retry and makes no second attempt."""
    async with core(servers) as it:
        job = job_for("shop")
        failed = AttemptResult(Outcome.FAILED, status_code=500, duration_ms=3)
        plan = plan_next(1, failed.outcome, it.deliverer.schedule, None)
        await it.deliverer.deliveries.record(job, failed, plan)  # then the crash
        assert await attempts(db, job.event_id) == [(1, 500, "retry", False)]
        resumed = await it.deliver(job)
        waiting = await it.retry_messages()
    assert (resumed.step, resumed.plan) == (Step.RESUMED, plan)
    assert it.shop.requests == []
    assert [(m.message_id, m.headers[HEADER_ATTEMPT]) for m in waiting] == [(job.event_id, 2)]
    assert await attempts(db, job.event_id) == [(1, 500, "retry", True)]


async def test_a_message_of_a_superseded_round_does_nothing(
    servers: Servers, db: asyncpg.Connection
) -> None:
    async with core(servers) as it:
        job = job_for("shop", round_=0)
        # An operator replayed it meanwhile: the delivery is in round 1.
        await store.open_delivery(db, job.event_id, "shop", job.event_type, 1)
        stale = await it.deliver(job)
        replayed = await it.deliver(Job(job.event, "shop", 1, 1, job.correlation_id))
    assert stale.step is Step.STALE
    assert replayed.step is Step.ATTEMPTED
    assert [r.headers["webhook-id"] for r in it.shop.requests] == [job.event_id]  # round 1's
    assert await db.fetchval("SELECT round FROM webhook_attempts") == 1


async def test_a_disabled_endpoint_parks_the_delivery_and_sends_nothing(
    servers: Servers, db: asyncpg.Connection
) -> None:
    await store.disable_endpoint(db, "shop", "operator: merchant asked")
    async with core(servers) as it:
        job = job_for("shop")
        parked = await it.deliver(job)
    dead = await dead_messages(servers.amqp_url, servers.namespace)
    assert parked.step is Step.PARKED
    assert it.shop.requests == []
    assert await delivery_states(servers.database_url) == {(job.event_id, "shop"): "parked"}
    assert [(m.message_id, m.headers[HEADER_DEAD_REASON]) for m in dead] == [
        (job.event_id, "parked: endpoint disabled: operator: merchant asked")
    ]
    assert await attempts(db, job.event_id) == []
