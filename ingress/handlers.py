"""POST/GET ``/callbacks/{provider}/{account}``: verify → publish (confirmed) → provider's ack.

Every refusal is one structured log line and a short text body; nothing unverified is
published. A genuine callback is acknowledged only once the broker holds it, so a crash or a
broker outage before that makes the provider resend instead of losing it.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from datetime import UTC, datetime

import structlog
from aiohttp import web

from contracts.callbacks import RawRequest
from ingress.broker import PublishFailed, Unencodable
from ingress.client_address import client_address
from ingress.metrics import UNKNOWN, IngressMetrics
from ingress.providers.base import Rejected
from ingress.state import STATE

__all__ = ["handle_callback", "healthz", "readyz"]

log = structlog.get_logger("ingress")

_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _correlation_id(request: web.Request) -> str:
    for header in ("X-Correlation-Id", "X-Request-Id"):
        value = request.headers.get(header)
        if value and _CORRELATION_ID.match(value):
            return value
    return secrets.token_hex(16)  # the format of uuid4().hex, at a third of the cost


def _refuse(
    metrics: IngressMetrics | None,
    where: tuple[str, str],
    status: int,
    reason: str,
    **fields: object,
) -> web.Response:
    log.warning("ingress.callback_rejected", http_status=status, reason=reason, **fields)
    if metrics is not None:
        metrics.count(*where, "rejected", reason)
    return web.Response(status=status, text=reason + "\n")


async def handle_callback(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE]
    metrics = state.metrics
    provider_name = request.match_info["provider"]
    account_name = request.match_info["account"]
    cid = _correlation_id(request)
    structlog.contextvars.bind_contextvars(
        correlation_id=cid, provider=provider_name, account=account_name
    )
    try:
        module = state.providers.get(provider_name)
        account = state.config.account(provider_name, account_name)
        if module is None or account is None:
            # Not the URL's words as labels: anyone could grow the label set.
            return _refuse(metrics, (UNKNOWN, UNKNOWN), 404, "unknown provider account")
        where = (provider_name, account_name)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        remote = client_address(
            peer[0] if peer else None,
            # Every line, in order: a client can write the first one itself.
            request.headers.getall("X-Forwarded-For", []),
            state.config.trusted_proxies,
        )
        if not account.ip_allowed(remote):
            return _refuse(metrics, where, 403, "source address not allowed", remote=remote)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(metrics, where, 413, "request body too large")
        raw = RawRequest(
            method=request.method,
            path=request.path,
            # The raw query, exactly as sent: signatures cover these bytes, not a re-encoding.
            query_string=request.raw_path.partition("?")[2],
            body=body,
            headers={
                h: request.headers[h] for h in module.relevant_headers if h in request.headers
            },
            remote=remote,
        )
        received_at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        try:
            accepted = module.verify(raw, account, received_at)
        except Rejected as rejected:
            return _refuse(metrics, where, rejected.status, rejected.reason, **rejected.log_fields)
        except Exception:
            # A module bug must not ack: 500 makes the provider resend once it is fixed.
            log.exception("ingress.verify_crashed")
            if metrics is not None:
                metrics.count(*where, "error", "verify crashed")
            return web.Response(status=500, text="internal error\n")
        callback = dataclasses.replace(accepted.callback, correlation_id=cid)
        callback_id = callback.id  # derived (uuid5) each time it is read: once is enough
        try:
            await state.publisher.publish(callback)
        except Unencodable as exc:
            # Verified, yet the contract cannot carry it: the provider module let through
            # something it should have refused. A bug, like a crash in verify: 500 at once,
            # and the provider's resend after the fix goes through.
            log.error(
                "ingress.callback_unencodable",
                error=str(exc.error)[:200],
                error_type=type(exc.error).__name__,
                callback_id=callback_id,
                transaction_id=callback.transaction_id[:64],
            )
            if metrics is not None:
                metrics.count(*where, "unencodable")
            return web.Response(status=500, text="internal error\n")
        except PublishFailed as exc:
            log.error("ingress.publish_failed", error=str(exc), callback_id=callback_id)
            if metrics is not None:
                metrics.count(*where, "publish_failed")
            return web.Response(status=503, text="temporarily unavailable\n")
        log.info(
            "ingress.callback_accepted",
            callback_id=callback_id,
            transaction_id=callback.transaction_id,
            status=callback.status.value,
            provider_status=callback.provider_status,
        )
        if metrics is not None:
            metrics.accepted(provider_name, account_name, time.perf_counter() - started)
        ack = accepted.ack
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)
    finally:
        structlog.contextvars.clear_contextvars()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE].publisher.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="broker not connected\n")
