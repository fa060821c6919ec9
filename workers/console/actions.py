"""The console's operator actions: deliveries (replay one or all), jobs, endpoints, dead letters.

Each action is a POST that redirects back with a notice (post/redirect/get), so a reload never
repeats one; bulk replays go through a confirmation page and run as a job (``jobs.py``).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from workers.console import queries
from workers.console.app import BASE, FORM, ConsoleState, render
from workers.console.helpers import (
    back_to,
    console_state,
    pool_of,
    redirect,
    text_param,
    with_notice,
)
from workers.console.jobs import job_status
from workers.console.mask import mask_callback, mask_value
from workers.ledger.commands import replay_dead
from workers.webhooks import store
from workers.webhooks.filters import STATES as DELIVERY_STATES
from workers.webhooks.filters import (
    DeliveryFilter,
    InvalidFilter,
    count_deliveries,
    merchants_of_endpoint,
    search_deliveries,
)
from workers.webhooks.replay import replay_deliveries
from workers.when import parse_since

__all__ = ["add_routes"]

log = structlog.get_logger(__name__)


# ---------------------------------------------------------------------------- deliveries


def _delivery_filter(state: ConsoleState, params: Any) -> DeliveryFilter:
    merchants: tuple[str, ...] | None = None
    endpoint = (params.get("endpoint") or "").strip()
    merchant = (params.get("merchant") or "").strip()
    if endpoint:
        merchants = merchants_of_endpoint(state.config, endpoint)
    if merchant:
        merchants = (
            (merchant,) if merchants is None else tuple(m for m in merchants if m == merchant)
        )

    def when(name: str) -> datetime | None:
        text = (params.get(name) or "").strip()
        if not text:
            return None
        try:
            return parse_since(text)
        except argparse.ArgumentTypeError as exc:
            raise InvalidFilter(f"{name}: {exc}") from None

    return DeliveryFilter(
        states=tuple(s for s in params.getall("state", []) if s),
        merchants=merchants,
        since=when("since"),
        until=when("until"),
    )


def _filter_query(params: Any) -> list[tuple[str, str]]:
    keys = ("state", "merchant", "endpoint", "since", "until")
    return [(k, v) for k, v in params.items() if k in keys and v]


async def deliveries_page(request: web.Request) -> web.StreamResponse:
    state = console_state(request)
    error = None
    page = None
    total = 0
    flt = None
    try:
        flt = _delivery_filter(state, request.query)
        async with pool_of(request).acquire() as conn:
            page = await search_deliveries(conn, flt, after=text_param(request, "after"))
            total = await count_deliveries(conn, flt)
    except InvalidFilter as exc:
        error = str(exc)
    return render(
        request,
        "deliveries.html",
        status=400 if error else 200,
        error=error,
        page=page,
        total=total,
        flt=flt,
        filter_query=_filter_query(request.query),
        selected_states=request.query.getall("state", []),
        query=request.query,
        states=DELIVERY_STATES,
        merchants=sorted(state.config.merchants),
        endpoints=sorted({m.webhook_url for m in state.config.merchants.values()}),
    )


async def replay_one(request: web.Request) -> web.StreamResponse:
    form = request[FORM]
    event_id, merchant = str(form.get("event_id") or ""), str(form.get("merchant") or "")
    back = back_to(request, f"{BASE}/deliveries")
    async with pool_of(request).acquire() as conn:
        settings = console_state(request).settings
        result = await replay_deliveries(conn, settings, [(event_id, merchant)])
    log.info(
        "console.replayed",
        event_id=event_id,
        merchant=merchant,
        replayed=result.replayed,
        remote=request.remote,
    )
    if result.replayed == 0:
        raise redirect(with_notice(back, "replay-missing"))
    raise redirect(with_notice(back, "replayed", result.replayed))


def _bad_filter(request: web.Request, exc: InvalidFilter) -> web.Response:
    return render(request, "error.html", status=400, title="Bad filter", detail=str(exc))


async def replay_confirm(request: web.Request) -> web.StreamResponse:
    state = console_state(request)
    try:
        flt = _delivery_filter(state, request.query)
    except InvalidFilter as exc:
        return _bad_filter(request, exc)
    async with pool_of(request).acquire() as conn:
        total = await count_deliveries(conn, flt)
        sample = await search_deliveries(conn, flt, limit=10)
    return render(
        request,
        "replay_confirm.html",
        flt=flt,
        total=total,
        sample=sample.rows,
        filter_query=_filter_query(request.query),
    )


async def replay_all(request: web.Request) -> web.StreamResponse:
    try:
        flt = _delivery_filter(console_state(request), request[FORM])
    except InvalidFilter as exc:
        return _bad_filter(request, exc)
    job_id, _ = await console_state(request).jobs.start_replay(flt, request.remote or "")
    raise redirect(f"{BASE}/jobs/{job_id}")


async def job_page(request: web.Request) -> web.StreamResponse:
    return await _job(request, "job.html")


async def job_live(request: web.Request) -> web.StreamResponse:
    return await _job(request, "job_live.html")


async def _job(request: web.Request, template: str) -> web.StreamResponse:
    async with pool_of(request).acquire() as conn:
        job = await job_status(conn, request.match_info["job_id"])
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    return render(request, template, job=job)


async def job_json(request: web.Request) -> web.StreamResponse:
    async with pool_of(request).acquire() as conn:
        job = await job_status(conn, request.match_info["job_id"])
    if job is None:
        return web.json_response({"error": "no such job"}, status=404)
    doc = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in job.items()}
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


# ----------------------------------------------------------------------------- endpoints


async def endpoints_page(request: web.Request) -> web.StreamResponse:
    state = console_state(request)
    async with pool_of(request).acquire() as conn:
        rows = await conn.fetch("SELECT * FROM webhook_endpoints ORDER BY merchant")
        view = await queries.overview_trouble(conn)
    known = {r["merchant"]: dict(r) for r in rows}
    endpoints = [
        {
            "merchant": m.id,
            "url": m.webhook_url,
            "configured": m.enabled,
            "row": known.get(m.id),
            "trouble": view.get(m.id, {}),
        }
        for m in sorted(state.config.merchants.values(), key=lambda m: m.id)
    ]
    others = [r for name, r in known.items() if name not in state.config.merchants]
    return render(request, "endpoints.html", endpoints=endpoints, others=others)


async def endpoint_action(request: web.Request) -> web.StreamResponse:
    merchant = request.match_info["merchant"]
    action = request.match_info["action"]
    async with pool_of(request).acquire() as conn, conn.transaction():
        known = merchant in console_state(request).config.merchants or await conn.fetchval(
            "SELECT 1 FROM webhook_endpoints WHERE merchant = $1", merchant
        )
        if not known:
            raise web.HTTPNotFound(text=f"no merchant {merchant}")
        if action == "enable":
            await store.enable_endpoint(conn, merchant)
            parked = None
        else:
            reason = str(request[FORM].get("reason") or "").strip()[:200] or "operator"
            parked = await store.disable_endpoint(conn, merchant, reason)
    log.info("console.endpoint", merchant=merchant, action=action, remote=request.remote)
    code = "enabled" if action == "enable" else "disabled"
    raise redirect(with_notice(f"{BASE}/endpoints", code, parked))


# -------------------------------------------------------------------------- dead letters

_PEEK_LIMIT = 20


async def dead_letters_page(request: web.Request) -> web.StreamResponse:
    state = console_state(request)
    t = state.topology
    queues = {"ledger": t.ledger_dead_queue, "orders": t.orders_dead_queue}
    depths = await state.probe.depths([*queues.values(), t.webhooks_dead_queue])
    which = request.query.get("peek")
    peeked = None
    if which in queues:
        count, messages = await state.probe.peek(queues[which], _PEEK_LIMIT)
        peeked = {"queue": queues[which], "count": count, "messages": _shown(messages)}
    return render(
        request,
        "dead_letters.html",
        depths=depths,
        queues=queues,
        webhooks_dead=t.webhooks_dead_queue,
        peeked=peeked,
        which=which,
    )


def _shown(messages: list[Any]) -> list[dict[str, Any]]:
    """Peeked dead letters for a page: headers and documents masked; other bodies hidden."""
    out = []
    for m in messages:
        headers = mask_value({str(k): _plain(v) for k, v in m.headers.items()})
        documents: list[Any] = []
        note = None
        try:
            parsed = orjson.loads(m.body)
        except orjson.JSONDecodeError:
            note = f"{len(m.body)} bytes, not JSON: not shown"
        else:
            for doc in parsed if isinstance(parsed, list) else [parsed]:
                if isinstance(doc, dict) and "raw" in doc:
                    documents.append(mask_callback(doc))
                else:
                    text = orjson.dumps(mask_value(doc), option=orjson.OPT_INDENT_2).decode()
                    documents.append({"plain": text})
        out.append({"message": m, "headers": headers, "documents": documents, "note": note})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def dead_letters_replay(request: web.Request) -> web.StreamResponse:
    form = request[FORM]
    queue = str(form.get("queue") or "")
    if queue not in ("ledger", "orders"):
        raise web.HTTPBadRequest(text="queue is ledger or orders")
    limit_text = str(form.get("limit") or "").strip()
    limit = int(limit_text) if limit_text.isdigit() else None
    moved = await replay_dead(console_state(request).settings, limit, queue)
    log.info("console.dead_letters_replayed", queue=queue, moved=moved, remote=request.remote)
    raise redirect(with_notice(f"{BASE}/dead-letters", "moved", moved))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/deliveries", deliveries_page)
    r.add_post("/deliveries/replay", replay_one)
    r.add_get("/deliveries/replay-all", replay_confirm)
    r.add_post("/deliveries/replay-all", replay_all)
    r.add_get("/jobs/{job_id}", job_page)
    r.add_get("/jobs/{job_id}/live", job_live)
    r.add_get("/api/jobs/{job_id}", job_json)
    r.add_get("/endpoints", endpoints_page)
    r.add_post("/endpoints/{merchant}/{action:enable|disable}", endpoint_action)
    r.add_get("/dead-letters", dead_letters_page)
    r.add_post("/dead-letters/replay", dead_letters_replay)
