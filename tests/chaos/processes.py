"""Every payhook role as its own OS process, watched, killed on purpose and restarted.

The chaos run is the supervisor of the roles it kills, and of nothing else: a role that exits
without having been killed is recorded (``Supervisor.unexpected``) and ``failed`` is set, so
the run stops and reports it with the end of that process's log, instead of quietly
restarting it. Each incarnation of a role logs to its own file (``<role>.<n>.log``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

__all__ = ["RoleExit", "RoleSpec", "Supervisor", "log_tail"]

READY_POLL_S = 0.1

# Every role process still running. The run kills them on its way out; this is the net for a
# run that never got there (a pytest timeout, Ctrl-C): no role outlives the test process.
_RUNNING: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """One role process: ``python -m payhook <argv>`` with its own health port."""

    name: str  # "ingress-1"
    argv: tuple[str, ...]  # ("ingress",), ("worker", "ledger") …
    health_port: int
    env: Mapping[str, str] = field(default_factory=dict)  # on top of the shared environment


@dataclass(slots=True)
class _Incarnation:
    number: int
    process: asyncio.subprocess.Process
    log: Path
    started: float
    killed: bool = False  # SIGKILLed on purpose: its exit is expected
    stopping: bool = False  # SIGTERMed at the end: its exit is checked by stop_all
    watcher: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class RoleExit:
    """How a role process ended after the final SIGTERM."""

    name: str
    code: int | None  # None: still running when we gave up on it (then SIGKILLed)
    seconds: float


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, workdir: Path, env: Mapping[str, str], specs: Sequence[RoleSpec]) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.specs = {spec.name: spec for spec in specs}
        self.current: dict[str, _Incarnation] = {}
        self.logs: list[Path] = []
        self.unexpected: list[str] = []
        self.failed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Supervisor:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Whatever is still running (a failed run): SIGKILL it, never leave a process behind.
        for inc in self.current.values():
            if inc.process.returncode is None:
                inc.killed = True
                with contextlib.suppress(ProcessLookupError):
                    inc.process.kill()
        for inc in self.current.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(inc.process.wait(), 10)
            if inc.watcher is not None:
                inc.watcher.cancel()
        if self._http is not None:
            await self._http.close()

    # -- starting and watching --------------------------------------------------------------

    async def start(self, name: str) -> None:
        spec = self.specs[name]
        previous = self.current.get(name)
        number = previous.number + 1 if previous is not None else 1
        log = self.workdir / f"{name}.{number}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "payhook",
                *spec.argv,
                env={**self.env, **spec.env, "PAYHOOK_HEALTH_PORT": str(spec.health_port)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run is not theirs
            )
        _RUNNING.add(process.pid)
        inc = _Incarnation(number, process, log, time.monotonic())
        inc.watcher = asyncio.create_task(self._watch(name, inc))
        self.current[name] = inc

    async def start_all(self) -> None:
        for name in self.specs:
            await self.start(name)

    async def _watch(self, name: str, inc: _Incarnation) -> None:
        code = await inc.process.wait()
        _RUNNING.discard(inc.process.pid)
        if inc.killed or inc.stopping:
            return
        self.unexpected.append(
            f"{name} (pid {inc.process.pid}, incarnation {inc.number}) exited on its own with "
            f"code {code} after {time.monotonic() - inc.started:.1f} s; end of {inc.log.name}:\n"
            f"{log_tail(inc.log)}"
        )
        self.failed.set()

    def pid(self, name: str) -> int:
        return self.current[name].process.pid

    # -- readiness ----------------------------------------------------------------------------

    async def readiness(self, name: str) -> tuple[int, dict[str, object]] | None:
        """``/readyz`` of ``name``: (status, body), or None when it does not answer."""
        assert self._http is not None
        url = f"http://127.0.0.1:{self.specs[name].health_port}/readyz"
        try:
            async with self._http.get(url) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if text.startswith("{") else {}
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_ready(self, name: str, within: float) -> float:
        """Poll ``/readyz`` until 200; the monotonic time it answered so. Raises on timeout."""
        deadline = time.monotonic() + within
        last: object = "no answer"
        while time.monotonic() < deadline:
            if self.failed.is_set():
                raise AssertionError("a role exited on its own:\n" + "\n".join(self.unexpected))
            answer = await self.readiness(name)
            if answer is not None and answer[0] == 200:
                return time.monotonic()
            last = answer or last
            await asyncio.sleep(READY_POLL_S)
        raise AssertionError(
            f"{name} not ready within {within:.0f} s (last /readyz: {last}); end of log:\n"
            f"{log_tail(self.current[name].log)}"
        )

    async def wait_all_ready(self, within: float) -> float:
        times = await asyncio.gather(*(self.wait_ready(name, within) for name in self.specs))
        return max(times)

    # -- faults -------------------------------------------------------------------------------

    async def kill(self, name: str) -> None:
        """``kill -9`` the role's current process and wait until it is gone."""
        inc = self.current[name]
        inc.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(inc.process.pid, signal.SIGKILL)
        await inc.process.wait()

    # -- the end ------------------------------------------------------------------------------

    async def stop_all(self, patience: float) -> list[RoleExit]:
        """SIGTERM every role at once; each one's exit code and how long it took."""
        for inc in self.current.values():
            inc.stopping = True
        started = time.monotonic()
        for inc in self.current.values():
            with contextlib.suppress(ProcessLookupError):
                inc.process.send_signal(signal.SIGTERM)

        async def one(name: str, inc: _Incarnation) -> RoleExit:
            try:
                code: int | None = await asyncio.wait_for(inc.process.wait(), patience)
            except TimeoutError:
                code = None
                inc.killed = True
                with contextlib.suppress(ProcessLookupError):
                    inc.process.kill()
                await inc.process.wait()
            return RoleExit(name, code, time.monotonic() - started)

        return list(await asyncio.gather(*(one(name, inc) for name, inc in self.current.items())))
