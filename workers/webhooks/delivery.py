"""One HTTP attempt to a merchant endpoint: sign, POST, classify.

Each merchant gets its own ``Endpoint``: an ``HttpPool`` (``http.py``) of at most
``max_in_flight`` keep-alive connections (names resolved through the SSRF-guarded resolver
unless the merchant allows private addresses), a semaphore of ``max_in_flight`` and a circuit
breaker. Separate pools and limits are what keep
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

import structlog
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from contracts.config import Merchant
from workers.webhooks import signing
from workers.webhooks.breaker import CircuitBreaker
from workers.webhooks.http import HttpClientError, HttpPool
from workers.webhooks.retry import Outcome, parse_retry_after
from workers.webhooks.ssrf import BlockedAddress, GuardedResolver, check_url

__all__ = [
    "RESPONSE_BODY_LIMIT",
    "AttemptResult",
    "Endpoint",
    "EndpointRegistry",
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


# The same on every request to every endpoint: encoded once per endpoint with the request line.
FIXED_HEADERS = (("content-type", "application/json"), ("user-agent", USER_AGENT))


def signed_headers(
    keys: tuple[bytes, ...], event_id: str, body: bytes, timestamp: int
) -> tuple[tuple[str, str], ...]:
    """The headers that change per request (Standard Webhooks)."""
    return (
        ("webhook-id", event_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signing.signature_header(keys, event_id, timestamp, body)),
    )


def request_headers(
    keys: tuple[bytes, ...], event_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """Every header a webhook request carries besides host and content-length."""
    return dict(FIXED_HEADERS + signed_headers(keys, event_id, body, timestamp))


class Endpoint:
    """Per-merchant connection pool, concurrency limit and breaker."""

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
        self._client: HttpPool | None = None

    def saturated(self, wait_limit: int = 0) -> bool:
        """Deliveries waiting for a slot or holding one reached ``max(wait_limit, 2 * slots)``.

        Each of them holds one of the worker's prefetched messages. Past this bound a hanging
        endpoint would soon hold all of them and starve every other merchant, so the consumer
        hands further deliveries back to the broker for a moment instead. The worker sets
        ``wait_limit`` to half its prefetch, so a merely busy endpoint is not sent round.
        """
        return self.pending >= max(wait_limit, 2 * max(1, self.merchant.max_in_flight))

    def client(self) -> HttpPool:
        """The merchant's pool, made on first use (after ``check_url`` accepted the URL)."""
        if self._client is None:
            m = self.merchant
            resolver: AbstractResolver = DefaultResolver()
            if not m.allow_private:
                resolver = GuardedResolver(resolver)
            self._client = HttpPool(
                m.webhook_url,
                limit=m.max_in_flight,
                connect_timeout=m.connect_timeout_s,
                resolver=resolver,
                fixed_headers=FIXED_HEADERS,
                keep=RESPONSE_BODY_LIMIT,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


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
        headers = signed_headers(endpoint.keys, event_id, body, int(time.time()))
        # Redirects are never followed: a 3xx comes back as the answer. The timeout covers
        # connecting, sending, the status and headers, and the first 4 KiB of the body.
        response = await endpoint.client().post(headers, body, time_limit=merchant.timeout_s)
    except BlockedAddress:
        return AttemptResult(Outcome.FAILED, error_class="blocked_address", duration_ms=elapsed())
    except TimeoutError:
        return AttemptResult(Outcome.FAILED, error_class="timeout", duration_ms=elapsed())
    except HttpClientError as exc:  # dns_error, connection_error, server_disconnected_error, …
        return AttemptResult(Outcome.FAILED, error_class=exc.error_class, duration_ms=elapsed())
    except (OSError, ValueError) as exc:
        return AttemptResult(Outcome.FAILED, error_class=_error_class(exc), duration_ms=elapsed())
    # The status decided the outcome: a receiver that answered 200 and then stalled or
    # dropped the body still got the webhook (the pool keeps what of the body came in time).
    status = response.status
    retry_after = parse_retry_after(response.retry_after)
    text = response.body.decode("utf-8", errors="replace").replace("\x00", "")
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


def _error_class(exc: BaseException) -> str:
    """``ServerDisconnectedError`` → ``server_disconnected_error``: stable, greppable."""
    name = type(exc).__name__
    out = [name[0].lower()]
    for ch in name[1:]:
        out.append(f"_{ch.lower()}" if ch.isupper() else ch)
    return "".join(out)
