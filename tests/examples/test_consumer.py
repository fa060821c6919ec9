"""examples/consumer.py against the real broker and Postgres, fed by payhook's own relay.

Events are built and published by payhook's code (tests/relaying.py), so these tests break
when payhook's format changes under the example downstream teams copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.message import IncomingMessage

from contracts.statuses import Kind, Status
from examples.consumer import Options, run
from tests.ledger.factory import callback
from tests.relaying import Outbox, outbox, outbox_row
from tests.servers import BrokerJanitor

ROOT = Path(__file__).parents[2]
T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T] | T], what: str, patience: float = 20) -> T:
    """Poll ``check`` until it returns something true; fail after ``patience`` seconds."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {patience} s waiting for {what} (last: {result!r})")
        await asyncio.sleep(0.05)


@pytest.fixture
def options(
    amqp_url: str, database_url: str, namespace: str, amqp_cleanup: BrokerJanitor
) -> Options:
    queue = amqp_cleanup.register(f"{namespace}.shop.payments")
    amqp_cleanup.register(f"{queue}.dead")
    return Options(amqp_url, database_url, queue=queue, namespace=namespace, grace_s=10)


@pytest.fixture
async def box(
    database_url: str, amqp_url: str, namespace: str, db: asyncpg.Connection
) -> AsyncIterator[Outbox]:
    async with outbox(database_url, amqp_url, namespace) as relay:
        yield relay


@asynccontextmanager
async def consuming(options: Options, box: Outbox) -> AsyncIterator[None]:
    """The example's main coroutine, running until the block ends (then stopped gracefully)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(options, stop))

    async def ready() -> bool:
        if task.done():
            task.result()  # raises what made it stop
        return (await box.queue_state(options.queue))[1] > 0

    try:
        await eventually(ready, "the consumer to consume")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def ready_count(box: Outbox, queue: str) -> int:
    return (await box.queue_state(queue))[0]


async def processed(db: asyncpg.Connection) -> set[str]:
    return {str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM processed_events")}


async def payments(db: asyncpg.Connection) -> dict[tuple[str, str], tuple[str, int]]:
    rows = await db.fetch("SELECT * FROM downstream_payments")
    return {(r["provider"], r["transaction_id"]): (r["status"], r["events_applied"]) for r in rows}


async def test_each_event_is_applied_once_however_often_it_arrives(
    options: Options, box: Outbox, db: asyncpg.Connection
) -> None:
    # The success a second after the pending: the example orders a payment's events by time,
    # and the six deliveries arrive together (one relay batch), handled concurrently.
    later = dataclasses.replace(
        callback(Status.SUCCEEDED, "T1"), received_at="2026-01-02T03:04:06Z"
    )
    rows = [
        outbox_row(callback(Status.PENDING, "T1")),
        outbox_row(later),
        outbox_row(callback(Status.SUCCEEDED, "T2", provider="paygol")),
        outbox_row(callback(Status.SUCCEEDED, "P1", kind=Kind.PAYOUT)),  # not bound: payment.#
    ]
    wanted = {row.id for row in rows[:3]}
    async with consuming(options, box):
        await box.emit(*rows)
        await box.republish(*(row.id for row in rows))  # every event a second time, same id

        async def all_taken() -> bool:
            return await processed(db) == wanted and await ready_count(box, options.queue) == 0

        await eventually(all_taken, "three events applied and the queue drained")
    # Stopped: nothing came back to the queue, so all six deliveries were acked.
    assert await ready_count(box, options.queue) == 0
    assert await ready_count(box, f"{options.queue}.dead") == 0
    assert await processed(db) == wanted
    assert await payments(db) == {
        ("paysera", "T1"): ("succeeded", 2),
        ("paygol", "T2"): ("succeeded", 1),
    }


async def test_a_redelivery_after_the_commit_changes_nothing(
    options: Options, box: Outbox, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[str | None] = []
    acked: list[tuple[str | None, bool]] = []
    real_ack = IncomingMessage.ack

    async def ack_lost_once(self: IncomingMessage, multiple: bool = False) -> None:
        if not dropped:  # committed, but the ack never reaches the broker
            dropped.append(self.message_id)
            return
        acked.append((self.message_id, bool(self.redelivered)))
        await real_ack(self, multiple)

    monkeypatch.setattr(IncomingMessage, "ack", ack_lost_once)
    row = outbox_row(callback(Status.SUCCEEDED, "T1"))
    async with consuming(options, box):
        await box.emit(row)
        await eventually(lambda: dropped, "the first ack")
    # The consumer closed its connection with the event unacked: the broker has it again.
    await eventually(lambda: ready_count(box, options.queue), "the event back in the queue")
    async with consuming(options, box):
        await eventually(lambda: acked, "the redelivery's ack")
    assert dropped == [row.id]
    assert acked == [(row.id, True)]
    assert await ready_count(box, options.queue) == 0
    assert await processed(db) == {row.id}
    assert await payments(db) == {("paysera", "T1"): ("succeeded", 1)}


async def test_events_it_cannot_handle_go_to_its_dead_letter_queue(
    options: Options, box: Outbox, db: asyncpg.Connection
) -> None:
    good = outbox_row(callback(Status.SUCCEEDED, "T1"))
    row = outbox_row(callback(Status.SUCCEEDED, "T2"))
    doc = orjson.loads(row.body)
    doc["data"]["amount"] = "12.50"  # money is integer minor units: fails the schema
    bad = dataclasses.replace(row, body=orjson.dumps(doc))
    dead = f"{options.queue}.dead"
    async with consuming(options, box):
        await box.emit(bad, good)
        exchange = await box.channel.get_exchange(box.exchange_name)
        not_json = aio_pika.Message(b"{not json", message_id="not-json")
        await exchange.publish(not_json, routing_key="payment.succeeded.paysera")

        async def settled() -> bool:
            return await processed(db) == {good.id} and await ready_count(box, dead) == 2

        await eventually(settled, "one event applied, two dead-lettered")
    assert await ready_count(box, options.queue) == 0
    assert await payments(db) == {("paysera", "T1"): ("succeeded", 1)}
    queue = await box.channel.declare_queue(dead, passive=True)
    bodies = []
    for _ in range(2):
        message = await queue.get(timeout=5)
        bodies.append(message.body)
        await message.ack()
    assert orjson.loads(bodies[0]) == doc
    assert bodies[1] == b"{not json"


async def test_sigterm_lets_the_event_in_flight_finish(
    options: Options, box: Outbox, db: asyncpg.Connection, database_url: str
) -> None:
    command = [sys.executable, str(ROOT / "examples" / "consumer.py"), "--amqp-url"]
    command += [options.amqp_url, "--database-url", options.database_url, "--queue"]
    command += [options.queue, "--namespace", options.namespace, "--routing-key", "payment.*.*"]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []

    async def read_until(event: str) -> None:
        assert proc.stdout is not None
        while not any(line.get("event") == event for line in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            assert line, f"the consumer exited before {event!r}: {lines}"
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                lines.append({"text": line.decode()})

    locker = await asyncpg.connect(database_url)
    try:
        await read_until("consumer.started")
        # Hold the consumer's effect: its UPDATE waits on this lock until we let go.
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE downstream_payments IN EXCLUSIVE MODE")
        row = outbox_row(callback(Status.SUCCEEDED, "T1"))
        await box.emit(row)

        async def blocked() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%downstream_payments%' AND datname = current_database()"
                )
            )

        await eventually(blocked, "the consumer's effect waiting on the lock")
        proc.send_signal(signal.SIGTERM)
        await read_until("consumer.stopping")
        assert proc.returncode is None
        await transaction.rollback()
        await read_until("consumer.stopped")
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
    finally:
        await locker.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [line["event"] for line in lines if line.get("event", "").startswith("event.")] == [
        "event.applied"
    ]
    assert await processed(db) == {row.id}
    assert await ready_count(box, options.queue) == 0
