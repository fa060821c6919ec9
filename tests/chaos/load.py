"""The providers' side of the chaos run: signed callbacks, each sent several times at once and
resent the way a provider does until it gets its acknowledgement.

Every copy of a callback is its own resending "provider": it sends, and on anything but the
provider's ack (a 5xx, a connection error, a timeout) waits a short backoff and sends again,
until acknowledged or ``give_up_s`` after its first attempt. A 4xx is a refusal: a genuine
callback must never get one, so it is recorded and that copy stops. Every answer is kept with
its time, which is what the fault recovery figures are computed from.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import yarl

from contracts.config import Config
from contracts.money import major_to_minor
from ingress.providers import PROVIDERS
from ingress.providers.base import SimulatedPayment, SimulatedRequest
from ingress.simulator import is_ack

__all__ = ["ACCOUNTS", "Answer", "Load", "Planned", "plan_callbacks"]

# provider -> (account, currencies it is sent in)
ACCOUNTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "paysera": ("main", ("EUR",)),
    "paygol": ("main", ("EUR", "USD")),
    "paycore": ("main", ("USD", "EUR")),
    "paypro": ("idr", ("IDR",)),
    "paysepro": ("main", ("EUR",)),
}
# How a Paysepro order reaches the admin listener relative to its callback (see harness).
REGISTRATIONS = ("before", "with", "after")
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class Planned:
    """One callback of the run and what the ledger must end up with for it."""

    index: int
    provider: str
    account: str
    transaction_id: str
    order_id: str
    amount: str  # major units, as the provider sends it
    currency: str
    minor: int
    request: SimulatedRequest
    registration: str | None  # Paysepro only: "before", "with" or "after"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.provider, self.account, self.transaction_id)


def plan_callbacks(config: Config, count: int, run_id: str, seed: int = 7) -> list[Planned]:
    """``count`` signed ``succeeded`` callbacks, round-robin over the five providers."""
    dice = random.Random(seed)
    providers = sorted(ACCOUNTS)
    planned = []
    for index in range(count):
        provider = providers[index % len(providers)]
        account_name, currencies = ACCOUNTS[provider]
        account = config.account(provider, account_name)
        assert account is not None, f"the config lacks {provider}/{account_name}"
        currency = currencies[index // len(providers) % len(currencies)]
        if currency == "IDR":
            amount = str(dice.randrange(10, 5000) * 1000)
        else:
            amount = f"{dice.randrange(100, 100_000) / 100:.2f}"
        # Paysera's and Paygol's ids are what their simulators make; ours only need be unique.
        txid = f"{run_id}{index:07d}" if provider == "paysera" else f"{provider}-{run_id}-{index}"
        order = f"ORD-{run_id}-{index}"
        payment = SimulatedPayment(
            order_id=order, amount=amount, currency=currency, status="succeeded",
            transaction_id=txid,
        )  # fmt: skip
        request = PROVIDERS[provider].simulate(account, payment)
        registration = None
        if provider == "paysepro":
            registration = REGISTRATIONS[index // len(providers) % len(REGISTRATIONS)]
        minor = major_to_minor(amount, currency)
        planned.append(
            Planned(
                index,
                provider,
                account_name,
                txid,
                order,
                amount,
                currency,
                minor,
                request,
                registration,
            )
        )
    return planned


@dataclass(frozen=True, slots=True)
class Answer:
    """One attempt: when it was sent and answered, and how."""

    sent: float
    answered: float
    acked: bool
    status: int | None  # None: no HTTP answer (connection error, timeout)


@dataclass
class Outcome:
    first_sent: float | None = None
    acked_at: float | None = None  # first ack of any copy
    refused: list[str] = field(default_factory=list)  # 4xx answers, "<status> <body>"


class Load:
    """Sends ``planned`` to ``base_url``: ``copies`` resending copies per callback."""

    def __init__(
        self,
        base_url: str,
        planned: Sequence[Planned],
        *,
        copies: int = 4,
        concurrency: int = 64,
        give_up_s: float = 120.0,
        request_timeout_s: float = 15.0,
        open_callbacks: int = 512,
    ) -> None:
        self.base_url = base_url
        self.planned = planned
        self.copies = copies
        self.give_up_s = give_up_s
        self.answers: list[Answer] = []
        self.outcomes = {p.index: Outcome() for p in planned}
        self.dispatched = 0  # callbacks whose copies have been started
        self.dispatch_times: list[float] = []
        self.started_at = 0.0
        self.finished_at = 0.0
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=5)
        self._concurrency = concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = asyncio.Semaphore(open_callbacks)
        self._milestones: list[tuple[int, asyncio.Future[None]]] = []
        self.on_dispatch: Callable[[Planned], None] = lambda _: None
        self.on_ack: Callable[[Planned], None] = lambda _: None

    def acked(self) -> list[Planned]:
        return [p for p in self.planned if self.outcomes[p.index].acked_at is not None]

    def reached(self, count: int) -> asyncio.Future[None]:
        """Resolved once ``count`` callbacks have been dispatched."""
        future = asyncio.get_running_loop().create_future()
        if self.dispatched >= count:
            future.set_result(None)
        else:
            self._milestones.append((count, future))
        return future

    async def run(
        self, pace: Callable[[int], float], until: Callable[[], bool] = lambda: False
    ) -> None:
        """Dispatch every callback; ``pace(i)`` says how long to wait before callback ``i``.

        ``until()`` true before a dispatch stops it there: the rest is never sent (a run whose
        length depends on what happens meanwhile plans more than it may need).

        At most ``open_callbacks`` callbacks are unfinished at a time (their copies still
        resending), so a flat-out run holds a bounded number of requests. Returns when every
        copy is acknowledged, refused or has given up.
        """
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0)
        self.started_at = time.monotonic()
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=self._timeout) as http:
                for i, planned in enumerate(self.planned):
                    delay = pace(i)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if until():
                        break
                    await self._open.acquire()
                    self.dispatched += 1
                    self.dispatch_times.append(time.monotonic())
                    self._resolve_milestones()
                    self.on_dispatch(planned)
                    task = asyncio.create_task(self._callback(http, planned))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                while self._tasks:
                    await asyncio.wait(set(self._tasks))
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            self.finished_at = time.monotonic()

    def _resolve_milestones(self) -> None:
        waiting = []
        for count, future in self._milestones:
            if self.dispatched >= count:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((count, future))
        self._milestones = waiting

    async def _callback(self, http: aiohttp.ClientSession, planned: Planned) -> None:
        try:
            await asyncio.gather(*(self._copy(http, planned) for _ in range(self.copies)))
        finally:
            self._open.release()

    async def _copy(self, http: aiohttp.ClientSession, planned: Planned) -> None:
        request = planned.request
        path = f"/callbacks/{planned.provider}/{planned.account}"
        query = f"?{request.query_string}" if request.query_string else ""
        # encoded=True: the query goes out byte for byte as signed.
        url = yarl.URL(self.base_url + path + query, encoded=True)
        outcome = self.outcomes[planned.index]
        first = time.monotonic()
        if outcome.first_sent is None:
            outcome.first_sent = first
        attempt = 0
        while time.monotonic() - first < self.give_up_s:
            async with self._slots:
                sent = time.monotonic()
                status: int | None = None
                body = b""
                try:
                    data = request.body or None
                    headers = dict(request.headers)
                    async with http.request(
                        request.method, url, data=data, headers=headers
                    ) as resp:
                        body = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    pass
                answered = time.monotonic()
            acked = status is not None and is_ack(request.expected_ack, status, body)
            self.answers.append(Answer(sent, answered, acked, status))
            if acked:
                if outcome.acked_at is None:
                    outcome.acked_at = answered
                    self.on_ack(planned)
                return
            if status is not None and 400 <= status < 500:
                outcome.refused.append(f"{status} {body[:200]!r}")
                return
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
