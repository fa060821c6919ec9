"""Helpers shared by the ledger tests: reading the ledger back, running workers, a loop thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aio_pika
import asyncpg

from contracts.callbacks import (
    CALLBACK_BATCH_TYPE,
    CallbackReceived,
    encode_callback,
    encode_callbacks,
)
from contracts.config import Config, Settings
from contracts.topology import HEADER_CORRELATION_ID, Topology
from workers import amqp
from workers.ledger.consumer import LedgerWorker

T = TypeVar("T")

LEDGER_TABLES = "postings, journal_entries, callbacks, payments, order_expectations, events"


async def truncate_ledger(conn: Any) -> None:
    await conn.execute(f"TRUNCATE {LEDGER_TABLES} RESTART IDENTITY CASCADE")


async def ledger_states(conn: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT provider, account, transaction_id, state, paid, refunded, fee FROM payments"
    )
    return {
        (r["provider"], r["account"], r["transaction_id"]): {
            "state": r["state"],
            "paid": r["paid"],
            "refunded": r["refunded"],
            "fee": r["fee"],
        }
        for r in rows
    }


async def ledger_balances(conn: Any) -> dict[tuple[str, str], int]:
    rows = await conn.fetch(
        "SELECT account, currency, sum(amount)::int8 AS total FROM postings"
        " GROUP BY account, currency"
    )
    return {(r["account"], r["currency"]): r["total"] for r in rows if r["total"] != 0}


async def publish_callbacks(
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    callbacks: Sequence[CallbackReceived],
) -> None:
    """Publish as the ingress does: persistent, confirmed, to ``<ns>.callbacks``."""
    exchange = await channel.get_exchange(topology.callbacks_exchange, ensure=False)
    await asyncio.gather(
        *(
            exchange.publish(
                aio_pika.Message(
                    encode_callback(cb),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    message_id=cb.id,
                    headers={HEADER_CORRELATION_ID: f"corr-{n}"},
                ),
                routing_key=topology.callback_routing_key(cb.provider, cb.account),
            )
            for n, cb in enumerate(callbacks)
        )
    )


async def publish_batch(
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    callbacks: Sequence[CallbackReceived],
) -> None:
    """Publish ``callbacks`` in one message, as the ingress packs callbacks that arrive together."""
    exchange = await channel.get_exchange(topology.callbacks_exchange, ensure=False)
    first = callbacks[0]
    await exchange.publish(
        aio_pika.Message(
            encode_callbacks(callbacks),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            type=CALLBACK_BATCH_TYPE,
        ),
        routing_key=topology.callback_routing_key(first.provider, first.account),
    )


class Workers:
    """Several ``LedgerWorker``s, each on its own AMQP connection, consuming one queue."""

    def __init__(self, workers: list[LedgerWorker], stop: asyncio.Event, tasks: list[Any]) -> None:
        self.workers = workers
        self.stop = stop
        self.tasks = tasks

    def handled(self) -> int:
        return sum(w.totals.recorded + w.totals.duplicates for w in self.workers)

    async def wait_handled(self, count: int, patience: float = 60.0) -> None:
        deadline = time.monotonic() + patience
        while self.handled() < count:
            for task in self.tasks:
                if task.done():
                    task.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"workers handled {self.handled()} of {count}")
            await asyncio.sleep(0.02)


async def start_workers(
    stack: AsyncExitStack,
    *,
    count: int,
    settings: Settings,
    config: Config,
    pool: asyncpg.Pool[Any],
    topology: Topology,
) -> Workers:
    stop = asyncio.Event()
    workers: list[LedgerWorker] = []
    tasks: list[Any] = []
    for n in range(count):
        connection = await amqp.connect(settings.amqp_url, name=f"ledger-test-{n}")
        stack.push_async_callback(connection.close)
        control = await connection.channel(publisher_confirms=True)
        await amqp.declare_topology(control, topology)
        dead = await control.get_exchange(topology.ledger_dead_exchange, ensure=False)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.ledger_prefetch)
        worker = LedgerWorker(settings, config, pool, topology, dead)
        cancel = await worker.subscribe(channel, topology.ledger_queue)
        workers.append(worker)
        tasks.append(asyncio.create_task(worker.run(stop)))
        stack.push_async_callback(cancel)

    async def finish() -> None:
        stop.set()
        await asyncio.gather(*tasks)

    stack.push_async_callback(finish)
    return Workers(workers, stop, tasks)


class LoopThread:
    """An event loop on its own thread, for sync code (hypothesis state machines) to drive."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def eventually(check: Callable[[], Awaitable[bool]], patience: float = 30.0) -> None:
    deadline = time.monotonic() + patience
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class TcpProxy:
    """A loopback TCP proxy whose links can be cut, to break a client's broker connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
