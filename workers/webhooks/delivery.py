"""One HTTP attempt to a merchant endpoint: sign, POST, classify.

Each merchant gets its own ``Endpoint``: an aiohttp session with its own connection pool
(through the SSRF-guarded resolver unless the merchant allows private addresses), a
semaphore of ``max_in_flight`` and a circuit breaker. Separate pools and limits are what keep
a slow endpoint from holding up deliveries to the others.

Classification (Standard Webhooks): 2xx is delivered; 410 asks us to stop (the endpoint is
disabled, its deliveries parked); everything else, including 3xx (redirects are not
followed), timeouts, connection and DNS errors, is a failure to retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp.resolver import DefaultResolver

from contracts.config import Merchant
from workers.webhooks import signing
from workers.webhooks.breaker import CircuitBreaker
from workers.webhooks.retry import Outcome, parse_retry_after
from workers.webhooks.ssrf import BlockedAddress, GuardedResolver, check_url

__all__ = [
    "RESPONSE_BODY_LIMIT",
    "AttemptResult",
    "Endpoint",
    "EndpointRegistry",
    "canonical_body",
    "post_event",
    "request_headers",
]

log = structlog.get_logger(__name__)

RESPONSE_BODY_LIMIT = 4096
USER_AGENT = "payhook-webhooks/1"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None = None
    error_class: str | None = None
    response_body: str = ""
    retry_after: float | None = None
    duration_ms: int = 0


def canonical_body(event: Mapping[str, Any]) -> bytes:
    """The bytes sent: sorted keys, so every attempt and every replay sends the same body."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def request_headers(
    keys: tuple[bytes, ...], event_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(keys, event_id, timestamp, body),
    }


class Endpoint:
    """Per-merchant session, concurrency limit and breaker."""

    def __init__(self, merchant: Merchant) -> None:
        self.merchant = merchant
        self.semaphore = asyncio.Semaphore(max(1, merchant.max_in_flight))
        # Deliveries of this process waiting for a slot or holding one; see ``saturated``.
        self.pending = 0
        self.breaker = CircuitBreaker(merchant.breaker_threshold, merchant.breaker_cooldown_s)
        self.keys: tuple[bytes, ...] = ()
        self.key_error: str | None = None
        try:
            self.keys = tuple(signing.decode_secret(s.reveal()) for s in merchant.secrets)
            if not self.keys:
                self.key_error = "no webhook secret configured"
        except ValueError as exc:
            self.key_error = str(exc)
        self._session: aiohttp.ClientSession | None = None

    def saturated(self, wait_limit: int = 0) -> bool:
        """Deliveries waiting for a slot or holding one reached ``max(wait_limit, 2 * slots)``.

        Each of them holds one of the worker's prefetched messages. Past this bound a hanging
        endpoint would soon hold all of them and starve every other merchant, so the consumer
        hands further deliveries back to the broker for a moment instead. The worker sets
        ``wait_limit`` to half its prefetch, so a merely busy endpoint is not sent round.
        """
        return self.pending >= max(wait_limit, 2 * max(1, self.merchant.max_in_flight))

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            m = self.merchant
            resolver: Any = DefaultResolver()
            if not m.allow_private:
                resolver = GuardedResolver(resolver)
            connector = aiohttp.TCPConnector(
                limit=max(1, m.max_in_flight), resolver=resolver, ttl_dns_cache=10
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=m.timeout_s, connect=m.connect_timeout_s),
                headers={"user-agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class EndpointRegistry:
    """``Endpoint`` per merchant id, created on first use."""

    def __init__(self, merchants: Mapping[str, Merchant]) -> None:
        self._merchants = merchants
        self._endpoints: dict[str, Endpoint] = {}

    def get(self, merchant_id: str) -> Endpoint | None:
        endpoint = self._endpoints.get(merchant_id)
        if endpoint is None:
            merchant = self._merchants.get(merchant_id)
            if merchant is None:
                return None
            endpoint = self._endpoints[merchant_id] = Endpoint(merchant)
            if endpoint.key_error:
                log.error("webhooks.bad_secret", merchant=merchant_id, reason=endpoint.key_error)
        return endpoint

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self._endpoints.values()))
        self._endpoints.clear()


async def post_event(endpoint: Endpoint, event_id: str, body: bytes) -> AttemptResult:
    """POST ``body`` once; never raises for anything the merchant or network can cause."""
    merchant = endpoint.merchant
    if endpoint.key_error:
        # Never send unsigned: the merchant could not tell us from anyone else.
        return AttemptResult(Outcome.FAILED, error_class="config_error")
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        check_url(merchant.webhook_url, allow_private=merchant.allow_private)
        headers = request_headers(endpoint.keys, event_id, body, int(time.time()))
        # The session's total timeout covers reading the body too; this is a backstop.
        async with asyncio.timeout(merchant.timeout_s + 1.0):
            async with endpoint.session().post(
                merchant.webhook_url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                head = await _read_head(response)
    except BlockedAddress:
        return AttemptResult(Outcome.FAILED, error_class="blocked_address", duration_ms=elapsed())
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return AttemptResult(Outcome.FAILED, error_class="timeout", duration_ms=elapsed())
    except aiohttp.ClientConnectorDNSError as exc:
        blocked = isinstance(exc.os_error, BlockedAddress)
        error_class = "blocked_address" if blocked else "dns_error"
        return AttemptResult(Outcome.FAILED, error_class=error_class, duration_ms=elapsed())
    except aiohttp.ClientConnectorError:
        return AttemptResult(Outcome.FAILED, error_class="connection_error", duration_ms=elapsed())
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return AttemptResult(Outcome.FAILED, error_class=_error_class(exc), duration_ms=elapsed())
    text = head.decode("utf-8", errors="replace").replace("\x00", "")
    if 200 <= status < 300:
        outcome = Outcome.DELIVERED
    elif status == 410:
        outcome = Outcome.GONE
    else:
        outcome = Outcome.FAILED
    return AttemptResult(
        outcome,
        status_code=status,
        response_body=text,
        retry_after=retry_after,
        duration_ms=elapsed(),
    )


async def _read_head(response: aiohttp.ClientResponse) -> bytes:
    """Up to ``RESPONSE_BODY_LIMIT`` bytes of the body, for the attempt log; best effort.

    The status line decided the outcome already: a receiver that answered 200 and then
    stalls or drops the body still got the webhook, so a failure here is not a failed attempt.
    """
    head = bytearray()
    try:
        while len(head) < RESPONSE_BODY_LIMIT:
            chunk = await response.content.read(RESPONSE_BODY_LIMIT - len(head))
            if not chunk:
                break
            head += chunk
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return bytes(head)


def _error_class(exc: BaseException) -> str:
    """``ServerDisconnectedError`` → ``server_disconnected_error``: stable, greppable."""
    name = type(exc).__name__
    out = [name[0].lower()]
    for ch in name[1:]:
        out.append(f"_{ch.lower()}" if ch.isupper() else ch)
    return "".join(out)
