"""The whole payhook system in-process against real servers, plus the far edges as peers.

``running_system`` starts every role (ingress, ledger worker, relay, webhook worker, admin)
exactly as ``payhook run`` does; ``Merchant`` is an aiohttp server on 127.0.0.1 recording what
it receives; ``EventTap`` is a downstream consumer bound to ``<ns>.events``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aiohttp import web

from contracts.config import Config, Settings
from contracts.topology import Topology
from payhook.roles import ROLES, run_roles
from runtime.health import Health
from tests.ports import free_port


def system_settings(database_url: str, amqp_url: str, namespace: str, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        listen_port=free_port(),
        admin_port=free_port(),
        shutdown_grace_s=5.0,
        **extra,
    )


@contextlib.asynccontextmanager
async def running_system(
    settings: Settings,
    config: Config,
    roles: tuple[str, ...] = tuple(ROLES),
    health: Health | None = None,
) -> AsyncIterator[str]:
    """Yields the ingress base URL once it answers ``/readyz``."""
    import aiohttp

    stop = asyncio.Event()
    task = asyncio.create_task(run_roles(settings, config, roles, stop, health))
    base = f"http://{settings.listen_host}:{settings.listen_port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                if task.done():
                    task.result()  # surfaces the start-up error
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError("ingress did not become ready")
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@dataclass
class Merchant:
    """A merchant's webhook endpoint; ``respond`` decides each answer (default 200)."""

    requests: list[tuple[Mapping[str, str], bytes]] = field(default_factory=list)
    respond: Callable[[int], int] = lambda n: 200
    url: str = ""
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        self.received.set()
        return web.Response(status=self.respond(len(self.requests)))

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Merchant]:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hooks"
        try:
            yield self
        finally:
            await runner.cleanup()

    async def wait_for(self, count: int, patience: float = 20) -> None:
        async with asyncio.timeout(patience):
            while len(self.requests) < count:
                self.received.clear()
                await self.received.wait()


class EventTap:
    """A downstream service: an exclusive queue bound to ``<ns>.events`` with ``#``."""

    def __init__(self, amqp_url: str, namespace: str) -> None:
        self._amqp_url = amqp_url
        self._topology = Topology(namespace)
        self.events: list[dict[str, Any]] = []
        self.message_ids: list[str | None] = []

    async def __aenter__(self) -> EventTap:
        self._connection = await aio_pika.connect_robust(self._amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            self._topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.bind(exchange, routing_key="#")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def drain(self, expect: int, patience: float = 20, settle: float = 0.5) -> None:
        """Collect until ``expect`` events arrived, then ``settle`` more seconds for extras."""
        async with asyncio.timeout(patience):
            while len(self.events) < expect:
                await self._take(0.2)
        end = asyncio.get_running_loop().time() + settle
        while asyncio.get_running_loop().time() < end:
            await self._take(0.1)

    async def _take(self, wait: float) -> None:
        message = await self._queue.get(fail=False, timeout=wait)
        if message is None:
            await asyncio.sleep(wait)
            return
        await message.ack()
        self.events.append(orjson.loads(message.body))
        self.message_ids.append(message.message_id)


class TcpProxy:
    """A loopback TCP proxy we can cut, to take the broker away from one process only."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
