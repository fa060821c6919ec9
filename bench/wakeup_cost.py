"""What one HTTP request costs a server process at a trickle versus in a crowd (bounded; 127.0.0.1).

Why this exists: at 500 callbacks/s the whole pipeline spends ~3.7 ms of CPU per callback, at
2,000/s ~1.3 ms. Nothing in payhook does more work per callback at the lower rate; what changes
is how often a process wakes up for one message alone. This measures that effect without
payhook, on three server stacks of decreasing size, each in a process of its own:

- ``raw``: an ``asyncio.Protocol`` on uvloop that answers a fixed response (the floor);
- ``aiohttp-low``: aiohttp's low-level ``web.Server`` with one handler (no application, router
  or middlewares);
- ``aiohttp-app``: a ``web.Application`` with one route and a path parameter, as the ingress.

For each stack and each ``--rates`` value an open-loop client process sends ``--seconds`` of
300-byte POSTs at that fixed rate over ``--connections`` keep-alive connections (one request at
a time on each), and the server's CPU time is read from ``/proc/<pid>/schedstat`` (exact run
time, not ticks). It prints CPU microseconds per request and the client's latency p50/p99.

    .venv/bin/python bench/wakeup_cost.py --rates 250,500,2000,8000 --seconds 6

Each run stops by itself; every process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

BODY = b"a" * 300
REQUEST = b"POST /callbacks/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 300\r\n\r\n" + BODY
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nOK"
STACKS = ("raw", "aiohttp-low", "aiohttp-app")


def _serve(stack: str, port: int) -> None:
    import uvloop
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(text="OK")

    async def routed(request: web.Request) -> web.Response:
        request.match_info["name"]
        await request.read()
        return web.Response(text="OK")

    class Raw(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport, self.buffer = cast(asyncio.Transport, transport), b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while len(self.buffer) >= len(REQUEST):  # the client sends only REQUEST
                self.buffer = self.buffer[len(REQUEST) :]
                self.transport.write(RESPONSE)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if stack == "raw":
            await loop.create_server(Raw, "127.0.0.1", port)
        elif stack == "aiohttp-low":
            await loop.create_server(web.Server(handler, access_log=None), "127.0.0.1", port)
        else:
            app = web.Application()
            app.router.add_post("/callbacks/{name}", routed)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def _load(port: int, rate: float, seconds: float, connections: int) -> None:
    import uvloop

    async def main() -> None:
        free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(connections):
            free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        latencies: list[float] = []

        async def one() -> None:
            reader, writer = await free.get()
            started = time.perf_counter()
            writer.write(REQUEST)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            latencies.append(time.perf_counter() - started)
            free.put_nowait((reader, writer))

        count = int(rate * seconds)
        t0 = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        async with asyncio.timeout(seconds + 30):
            await asyncio.gather(*tasks)
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        print(f"{count} {p50 * 1000:.2f} {p99 * 1000:.2f}", flush=True)

    uvloop.run(main())


def _run_ns(pid: int) -> int:
    return sum(
        int((task / "schedstat").read_text().split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir()
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(stack: str, rate: float, seconds: float, connections: int) -> tuple[float, str]:
    port = _free_port()
    me = [sys.executable, __file__]
    server = subprocess.Popen([*me, "--role", "server", "--stack", stack, "--port", str(port)],
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{stack} server did not start")
        before = _run_ns(server.pid)
        load = subprocess.run(
            [*me, "--role", "load", "--port", str(port), "--rate", str(rate),
             "--seconds", str(seconds), "--connections", str(connections)],
            capture_output=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
        used_ns = _run_ns(server.pid) - before
    finally:
        server.terminate()
        server.wait(10)
    count, p50, p99 = load.stdout.split()
    return used_ns / 1000 / int(count), f"p50 {float(p50):.2f} ms, p99 {float(p99):.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--role", choices=("main", "server", "load"), default="main")
    parser.add_argument("--stack", choices=STACKS, default="raw")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--rates", default="250,500,2000,8000", help="requests/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="sending time per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--stacks", default=",".join(STACKS))
    args = parser.parse_args()
    if args.role == "server":
        return _serve(args.stack, args.port)
    if args.role == "load":
        return _load(args.port, args.rate, args.seconds, args.connections)
    rates = [float(r) for r in args.rates.split(",")]
    print(
        f"server CPU per request (us), {args.connections} connections, {args.seconds:g} s per run"
    )
    for stack in args.stacks.split(","):
        figures = []
        for rate in rates:
            us, latency = measure(stack, rate, args.seconds, args.connections)
            figures.append(us)
            print(
                f"  {stack:12} @ {rate:>6,.0f}/s: {us:6.1f} us per request ({latency})", flush=True
            )
        print(f"  {stack:12} lowest rate / highest rate: {figures[0] / figures[-1]:.1f} x")


if __name__ == "__main__":
    main()
