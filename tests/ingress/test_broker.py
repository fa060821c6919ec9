"""The publisher against the real broker: a callback the codec cannot write fails at once and
alone, and its batch-mates are still published."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aio_pika
import pytest

from contracts.callbacks import CallbackReceived, RawRequest, decode_callbacks
from contracts.statuses import Kind, Status, VerifiedBy
from contracts.topology import MIXED_CALLBACKS_ROUTING_KEY, Topology
from ingress.broker import LINGER_BELOW, CallbackPublisher, PublishFailed, Unencodable

# Long enough that waiting it out would fail the test's own timeout checks below.
PUBLISH_TIMEOUT_S = 20.0


def callback(transaction_id: str, **change: object) -> CallbackReceived:
    raw = RawRequest("POST", "/callbacks/paycore/main", "", b"{}", {}, "203.0.113.7")
    good = CallbackReceived(
        provider="paycore",
        account="main",
        transaction_id=transaction_id,
        provider_status="processed",
        status=Status.SUCCEEDED,
        kind=Kind.PAYMENT,
        verified_by=VerifiedBy.SIGNATURE,
        received_at="2025-01-01T00:00:00.000000Z",
        raw=raw,
        amount=2200,
        currency="USD",
    )
    return dataclasses.replace(good, **change)  # type: ignore[arg-type]


# What the encoder (orjson) refuses: a bigint beyond 64 bits, a lone surrogate.
UNENCODABLE = [{"amount": 2**64}, {"order_id": "\ud800"}, {"details": {"n": -(2**63) - 1}}]


@pytest.fixture
async def publisher(amqp_url: str, namespace: str) -> AsyncIterator[CallbackPublisher]:
    publisher = CallbackPublisher(amqp_url, Topology(namespace), timeout_s=PUBLISH_TIMEOUT_S)
    await publisher.start(wait_s=10)
    assert publisher.ready
    try:
        yield publisher
    finally:
        await publisher.close()


async def queued_transaction_ids(amqp_url: str, namespace: str) -> tuple[int, list[str]]:
    """Take every message off the ledger queue: (messages, transaction ids in them)."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Topology(namespace).ledger_queue, passive=True)
        messages, ids = 0, []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages += 1
            ids += [cb.transaction_id for cb, _ in decode_callbacks(message.body)]
        return messages, sorted(ids)


@pytest.mark.parametrize("change", UNENCODABLE, ids=["bigint", "surrogate", "detail"])
async def test_an_unencodable_callback_fails_alone_and_at_once(
    publisher: CallbackPublisher, amqp_url: str, namespace: str, change: dict[str, object]
) -> None:
    goods = [callback(f"good-{n}") for n in range(3)]
    bad = callback("bad", **change)
    # Created together, so all four join one batch (the batch is sent on the next turn).
    tasks = [asyncio.create_task(publisher.publish(cb)) for cb in (goods[0], bad, *goods[1:])]
    bad_task = tasks[1]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    # The bad one is answered before the broker confirmed anything for the others.
    assert done == {bad_task}
    assert len(pending) == 3
    with pytest.raises(Unencodable) as caught:
        bad_task.result()
    assert isinstance(caught.value, PublishFailed)  # never an acknowledgement
    assert caught.value.callback_id == bad.id
    assert isinstance(caught.value.error, TypeError)
    assert "cannot be encoded" in str(caught.value)
    await asyncio.gather(*pending)  # the others are confirmed
    messages, ids = await queued_transaction_ids(amqp_url, namespace)
    assert ids == ["good-0", "good-1", "good-2"]
    assert messages == 1  # still one message for the rest of the batch


async def test_a_batch_of_only_unencodable_callbacks_publishes_nothing(
    publisher: CallbackPublisher, amqp_url: str, namespace: str
) -> None:
    bads = [callback(f"bad-{n}", **change) for n, change in enumerate(UNENCODABLE)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(publisher.publish(cb) for cb in bads), return_exceptions=True)
    assert [type(r) for r in results] == [Unencodable] * len(bads)
    assert loop.time() - started < PUBLISH_TIMEOUT_S / 4  # not the publish timeout
    assert await queued_transaction_ids(amqp_url, namespace) == (0, [])


async def test_a_lone_unencodable_callback_and_the_next_one(
    publisher: CallbackPublisher, amqp_url: str, namespace: str
) -> None:
    with pytest.raises(Unencodable):
        await publisher.publish(callback("bad", amount=2**64))
    await publisher.publish(callback("after"))  # the publisher is unharmed
    assert await queued_transaction_ids(amqp_url, namespace) == (1, ["after"])


async def test_callbacks_of_several_accounts_ready_together_share_one_message(
    publisher: CallbackPublisher, amqp_url: str, namespace: str
) -> None:
    """Packing does not stop at an account's edge (a deployment with many provider accounts
    would otherwise send one message per callback): the message carries the account's
    routing key only when it holds one account's callbacks."""
    topology = Topology(namespace)
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(topology.callbacks_exchange, "callback.#")
        mixed = [callback("m-0"), callback("m-1", provider="paysera"), callback("m-2")]
        await asyncio.gather(*(publisher.publish(cb) for cb in mixed))  # one turn: one batch
        await publisher.publish(callback("alone", account="second"))

        keys: list[tuple[str, list[str]]] = []
        async with asyncio.timeout(10):
            while len(keys) < 2:
                message = await tap.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.02)
                    continue
                ids = [cb.transaction_id for cb, _ in decode_callbacks(message.body)]
                keys.append((message.routing_key or "", ids))
    assert keys == [
        (MIXED_CALLBACKS_ROUTING_KEY, ["m-0", "m-1", "m-2"]),
        (topology.callback_routing_key("paycore", "second"), ["alone"]),
    ]
    # The ledger's queue got both, all four callbacks.
    assert await queued_transaction_ids(amqp_url, namespace) == (2, ["alone", "m-0", "m-1", "m-2"])


async def test_a_small_batch_waits_for_company_and_a_big_one_goes_at_once(
    amqp_url: str, namespace: str
) -> None:
    """``PAYHOOK_PUBLISH_LINGER_MS``: a batch smaller than ``LINGER_BELOW`` at the end of its
    loop turn waits for callbacks of later turns; one that size or bigger is sent at once.
    The linger here (30 s) is far beyond the test's timeouts, so any wait for it fails."""
    publisher = CallbackPublisher(
        amqp_url, Topology(namespace), timeout_s=PUBLISH_TIMEOUT_S, max_batch=10, linger_s=30.0
    )
    await publisher.start(wait_s=10)
    try:
        first = asyncio.create_task(publisher.publish(callback("early")))
        for _ in range(5):
            await asyncio.sleep(0)  # its turn ends: a batch of one, lingering
        assert not first.done()
        later = [callback(f"later-{n}") for n in range(9)]  # the tenth fills the batch
        async with asyncio.timeout(10):
            await asyncio.gather(first, *(publisher.publish(cb) for cb in later))
            await asyncio.gather(
                *(publisher.publish(callback(f"big-{n}")) for n in range(LINGER_BELOW))
            )
    finally:
        await publisher.close()
    count, ids = await queued_transaction_ids(amqp_url, namespace)
    assert count == 2  # early + later-0..8 in one message, the big batch in the other
    assert ids == sorted(
        ["early", *(c.transaction_id for c in later)] + [f"big-{n}" for n in range(LINGER_BELOW)]
    )


async def test_closing_sends_a_lingering_batch_at_once(amqp_url: str, namespace: str) -> None:
    """A callback waiting in a lingering batch when the ingress shuts down still gets its
    confirm (and its provider the ack), not a failure after the session went away."""
    publisher = CallbackPublisher(
        amqp_url, Topology(namespace), timeout_s=PUBLISH_TIMEOUT_S, linger_s=30.0
    )
    await publisher.start(wait_s=10)
    waiting = asyncio.create_task(publisher.publish(callback("at-shutdown")))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    async with asyncio.timeout(10):
        await publisher.close()
        await waiting  # confirmed: raises PublishFailed otherwise
    assert await queued_transaction_ids(amqp_url, namespace) == (1, ["at-shutdown"])
