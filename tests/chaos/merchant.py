"""The merchant's webhook endpoint for the chaos run: verifies, records, and fails on purpose.

Every request is checked with the merchant-side ``standardwebhooks`` library and recorded by
its ``webhook-id``. A share of attempts is answered 500 so the worker's retry schedule runs;
no id fails more than ``max_failures_per_id`` times, so a schedule longer than that always
lands (what is asserted is the system's retrying, not the dice).
"""

from __future__ import annotations

import base64
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = ["ChaosMerchant"]


@dataclass
class ChaosMerchant:
    secret: str
    failure_rate: float = 0.2
    max_failures_per_id: int = 2
    seed: int = 0
    # webhook-id -> the status answered to each attempt, in order
    answers: dict[str, list[int]] = field(default_factory=dict)
    # webhook-id -> when each attempt arrived (monotonic), in step with ``answers``; how late
    # a retry came is measured from these (tests/chaos/node_loss.py)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    bad_signatures: list[str] = field(default_factory=list)
    id_mismatches: list[str] = field(default_factory=list)  # webhook-id differs from body id
    port: int = 0

    @staticmethod
    def new_secret() -> str:
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

    def __post_init__(self) -> None:
        self._hook = Webhook(self.secret)
        self._dice = random.Random(self.seed)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def delivered(self) -> set[str]:
        """Ids answered 200 at least once (each such request carried a valid signature)."""
        return {key for key, statuses in self.answers.items() if 200 in statuses}

    def attempts(self) -> int:
        return sum(len(statuses) for statuses in self.answers.values())

    def duplicates(self) -> int:
        """Deliveries answered 200 beyond the first one of their id."""
        return sum(max(0, statuses.count(200) - 1) for statuses in self.answers.values())

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        headers = dict(request.headers)
        webhook_id = request.headers.get("webhook-id", "")
        try:
            payload = self._hook.verify(body, headers)
        except WebhookVerificationError as exc:
            self.bad_signatures.append(f"{webhook_id or '(no id)'}: {exc}")
            self.answers.setdefault(webhook_id, []).append(401)
            self.arrivals.setdefault(webhook_id, []).append(arrived)
            return web.Response(status=401, text="bad signature")
        if not isinstance(payload, dict) or payload.get("id") != webhook_id:
            self.id_mismatches.append(webhook_id)
        statuses = self.answers.setdefault(webhook_id, [])
        failures = sum(1 for s in statuses if s != 200)
        status = 200
        if failures < self.max_failures_per_id and self._dice.random() < self.failure_rate:
            status = 500
        statuses.append(status)
        self.arrivals.setdefault(webhook_id, []).append(arrived)
        return web.Response(status=status, text="thanks" if status == 200 else "try again")

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[ChaosMerchant]:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        # asyncio's and uvloop's servers both have ``sockets``; AbstractServer does not say so.
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            await runner.cleanup()
