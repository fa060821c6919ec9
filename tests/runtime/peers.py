"""A server that appears, disappears and comes back: a TCP proxy on a fixed loopback port.

Put in front of the real Postgres or RabbitMQ, it lets a test start a payhook process while
"the server" is down (nothing listens yet), bring it up, cut every link, and take it away
again, without touching the real servers other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]


class FlakyServer:
    """Forwards 127.0.0.1:``port`` to ``target`` while up; refuses connections while down."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.cut = 0  # links cut by down(), both directions counted

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Stop listening and cut every open link (as a crashed server would)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
            self.cut += 1
        self._links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()
                self._links.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class PayhookProcess:
    """``python -m payhook ARGS`` with its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.output = bytearray()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "payhook",
            *self.args,
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def wait_for_output(self, needle: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while needle not in self.text:
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared:\n{self.text[-3000:]}")
            await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(
                f"payhook {' '.join(self.args)} exited {self.proc.returncode}:\n{self.text[-3000:]}"
            )

    async def stop(self, within: float) -> tuple[int, float]:
        """SIGTERM; the exit code and how long it took (SIGKILL after ``within``)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            raise AssertionError(f"no exit within {within} s:\n{self.text[-3000:]}") from None
        if self._reader is not None:
            await self._reader
        return code, time.monotonic() - started

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


async def get_status(url: str) -> tuple[int, Any]:
    """``(status, JSON body or text)`` of GET ``url``; ``(0, reason)`` if nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(url) as response,
        ):
            body: Any = await response.text()
            if response.content_type == "application/json":
                body = await response.json()
            return response.status, body
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


async def wait_status(url: str, status: int, process: PayhookProcess, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        got, body = await get_status(url)
        if got == status:
            return body
        process._check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: {got} {body}, not {status}:\n{process.text[-3000:]}")
        await asyncio.sleep(0.1)
