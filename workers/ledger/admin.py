"""The admin listener (``settings.admin_host:admin_port``): order expectations, payment lookups.

Separate from the public ingress so it can stay on a private interface. Every route but
``/healthz`` needs ``Authorization: Bearer <token>`` with one of ``[admin] tokens``; with no
tokens configured every request is refused.

    POST /orders                        register an expectation (expectations.py for the body)
                                        201 created, 200 unchanged/updated, 409 conflict, 400
    GET  /payments/<provider>/<txid>    the payment(s) with history and postings (?account=A)
    GET  /healthz                       200 while the process runs
    /console/…                          the operator console (``workers.console``; its own
                                        sign-in with the same tokens)

It listens from the start, also while Postgres is away: requests that need the database are
answered 503 (``database unavailable``) until it is back, so a caller knows to try again.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from contracts.config import Config, Settings
from runtime import database
from runtime.errors import describe, is_database_outage
from runtime.process import RoleContext
from workers.console import owns, register_console
from workers.ledger.apply import Policy
from workers.ledger.expectations import InvalidExpectation, parse_expectation
from workers.ledger.orders import register_order
from workers.ledger.queries import payment_details

__all__ = ["CONFIG", "POOL", "PoolRef", "build_admin_app", "run_admin"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class PoolRef:
    """The pool once Postgres answered (``None`` until then)."""

    pool: asyncpg.Pool[Any] | None = None


POOL = web.AppKey("ledger_pool", PoolRef)
CONFIG = web.AppKey("ledger_config", Config)
POLICY = web.AppKey("ledger_policy", Policy)

_MAX_BODY = 16 * 1024
_STATUS = {"created": 201, "unchanged": 200, "updated": 200, "conflict": 409}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    # Compare against every token (rotation) in constant time, without stopping at a match.
    matches = [
        hmac.compare_digest(given, t.reveal().encode()) for t in request.app[CONFIG].admin_tokens
    ]
    return any(matches)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz" or owns(request) or _authorized(request):
        return await handler(request)
    log.warning("ledger.admin_unauthorized", path=request.path, remote=request.remote)
    return _json({"error": "unauthorized"}, status=401)


@web.middleware
async def _database_outage(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        if not is_database_outage(exc):
            raise
        log.warning("ledger.admin_database_unavailable", path=request.path, reason=describe(exc))
        return _json({"error": "database unavailable"}, status=503)


def _pool(request: web.Request) -> asyncpg.Pool[Any]:
    pool = request.app[POOL].pool
    if pool is None:
        raise ConnectionRefusedError("not connected to Postgres yet")
    return pool


async def _orders(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        return _json({"error": "body too large"}, status=413)
    try:
        data = orjson.loads(await request.read())
        expectation = parse_expectation(data, request.app[CONFIG])
    except (orjson.JSONDecodeError, InvalidExpectation) as exc:
        return _json({"error": str(exc)}, status=400)
    result, released = await register_order(_pool(request), expectation, request.app[POLICY])
    log.info(
        "ledger.order_registered",
        provider=expectation.provider,
        account=expectation.account,
        order_id=expectation.order_id,
        result=result,
        via="admin",
    )
    body = {"result": result, "expectation": expectation.to_json(), "released": released.recorded}
    return _json(body, status=_STATUS[result])


async def _payment(request: web.Request) -> web.Response:
    provider = request.match_info["provider"]
    txid = request.match_info["transaction_id"]
    async with _pool(request).acquire() as conn:
        found = await payment_details(conn, provider, txid, request.query.get("account"))
    if not found:
        return _json({"error": "no such payment"}, status=404)
    return _json({"payments": found})


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_admin_app(
    pool: asyncpg.Pool[Any] | None, config: Config, settings: Settings | None = None
) -> web.Application:
    """The admin app; with ``settings`` (the broker it reads), the console too."""
    app = web.Application(middlewares=[_auth, _database_outage], client_max_size=_MAX_BODY)
    app[POOL] = PoolRef(pool)
    app[CONFIG] = config
    # Derived once: it is what releasing held callbacks decides them under.
    app[POLICY] = Policy.from_config(config)
    app.router.add_post("/orders", _orders)
    app.router.add_get("/payments/{provider}/{transaction_id}", _payment)
    app.router.add_get("/healthz", _healthz)
    if settings is not None:
        register_console(app, app[POOL], config, settings)
    return app


async def run_admin(ctx: RoleContext) -> None:
    """Serve the admin listener until ``ctx.stop``; the pool arrives when Postgres answers."""
    settings, config = ctx.settings, ctx.config
    # Registered before the first await: /readyz must not say ready (no dependency known
    # yet) while the listener starts and Postgres was never reached.
    postgres = ctx.dependency("postgres")
    app = build_admin_app(None, config, settings)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=settings.shutdown_grace_s
    )
    await runner.setup()
    pool: asyncpg.Pool[Any] | None = None
    try:
        site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
        await site.start()
        log.info("ledger.admin_started", host=settings.admin_host, port=settings.admin_port)
        if not config.admin_tokens:
            log.warning("ledger.admin_without_tokens", hint="set [admin] tokens; all refused")
        pool = await database.open_pool(
            settings.database_url, ctx.stop, postgres, min_size=1, max_size=4
        )
        app[POOL].pool = pool
        await ctx.stop.wait()
    finally:
        await runner.cleanup()
        if pool is not None:
            await database.close_pool(pool)
