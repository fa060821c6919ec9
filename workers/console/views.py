"""The console's pages: overview, payments, attention, deliveries, endpoints, dead letters.

Handlers only read the request, call the shared query functions (the same ones the
``payhook`` commands use) and render a template; actions are POSTs that redirect back with a
notice (post/redirect/get), so a reload never repeats one.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from workers.console import queries
from workers.console.app import BASE, FORM, STATE, ConsoleState, render
from workers.console.jobs import job_status
from workers.console.mask import mask_callback, mask_value
from workers.ledger.commands import replay_dead
from workers.ledger.queries import payment_details
from workers.ledger.search import (
    ATTENTION_KINDS,
    InvalidFilter,
    PaymentFilter,
    attention_kind,
    search_payments,
)
from workers.ledger.states import RANK
from workers.webhooks import store
from workers.webhooks.filters import (
    STATES as DELIVERY_STATES,
)
from workers.webhooks.filters import (
    DeliveryFilter,
    count_deliveries,
    deliveries_of_events,
    merchants_of_endpoint,
    search_deliveries,
)
from workers.webhooks.filters import (
    InvalidFilter as InvalidDeliveryFilter,
)
from workers.webhooks.replay import replay_deliveries
from workers.when import parse_since

__all__ = ["add_routes"]

log = structlog.get_logger(__name__)

# What each attention kind means and what to do, in docs/ledger.md's words.
ATTENTION_HELP: dict[str, tuple[str, str]] = {
    "held": (
        "Held: proven only by its source address (Paysepro) and no order expectation matched, "
        "so no money moved (docs/ledger.md, Order expectations).",
        "Have the shop register the order (POST /orders on the admin listener); the "
        "registration releases the held callback and the money moves if the terms match.",
    ),
    "mismatch": (
        "Mismatched: the callback's currency, amount or test flag disagree with the order's "
        "expectation, or a succeeded callback did not settle exactly the amount; no money "
        "moved (docs/ledger.md, Order expectations).",
        "Check the order with the merchant. If the expectation was wrong, register it again "
        "with the right terms: that decides the held callback again.",
    ),
    "conflict": (
        "Conflict: the callback contradicts the payment's history (another branch, such as "
        "succeeded after failed, another kind, currency or test flag); recorded, history only "
        "(docs/ledger.md, Payments and their states).",
        "Compare the history with the provider's panel; fix a mapping bug and ask the provider "
        "to resend, or settle it by hand with the provider. Terminal states are never left.",
    ),
    "invalid": (
        "Invalid: a money status without its amount; history only (docs/ledger.md).",
        "Look at the raw request below: the provider module may map a field wrongly.",
    ),
    "other": ("Flagged by the ledger.", "See docs/ledger.md."),
}


def _state(request: web.Request) -> ConsoleState:
    return request.app[STATE]


def _pool(request: web.Request) -> asyncpg.Pool[Any]:
    pool = _state(request).pool_ref.pool
    if pool is None:
        raise ConnectionRefusedError("not connected to Postgres yet")
    return pool


def _time_param(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_since(text)
    except argparse.ArgumentTypeError as exc:
        raise InvalidFilter(f"{name}: {exc}") from None


def _text_param(request: web.Request, name: str) -> str | None:
    return request.query.get(name, "").strip() or None


def _redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def _back(request: web.Request, default: str) -> str:
    target = str(request[FORM].get("back") or "")
    return target if target.startswith(BASE + "/") and not target.startswith("//") else default


def _with_notice(location: str, code: str, n: int | None = None) -> str:
    sep = "&" if "?" in location else "?"
    extra = f"&n={n}" if n is not None else ""
    return f"{location}{sep}notice={code}{extra}"


# ------------------------------------------------------------------------------ overview


async def _overview_data(request: web.Request) -> dict[str, Any]:
    state = _state(request)
    async with _pool(request).acquire() as conn:
        view = await queries.overview(conn)
    t = state.topology
    names = [t.ledger_queue, t.ledger_dead_queue, t.orders_dead_queue, t.webhooks_dead_queue]
    depths = {d.name: d for d in await state.probe.depths(names)}
    return {"view": view, "depths": depths, "topology": t, "windows": queries.WINDOWS_S}


async def overview_page(request: web.Request) -> web.StreamResponse:
    return render(request, "overview.html", **await _overview_data(request))


async def overview_live(request: web.Request) -> web.StreamResponse:
    return render(request, "overview_live.html", **await _overview_data(request))


async def overview_json(request: web.Request) -> web.StreamResponse:
    data = await _overview_data(request)
    view: queries.Overview = data["view"]
    doc = {
        "now": view.now.isoformat(),
        "callbacks_per_s": {
            p: {str(w): r for w, r in rates.items()} for p, rates in view.rates.items()
        },
        "callbacks_window_covered_s": view.covered_s,
        "ledger_lag_s": view.lag,
        "ledger_lag_samples": view.lag_samples,
        "newest_callback": view.newest_callback.isoformat() if view.newest_callback else None,
        "outbox_unpublished": view.unpublished,
        "outbox_unpublished_capped": view.unpublished_capped,
        "outbox_oldest": view.oldest_unpublished.isoformat() if view.oldest_unpublished else None,
        "deliveries_in_trouble": [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in view.trouble
        ],
        "attention": view.attention,
        "queues": {
            n: {"messages": d.messages, "error": d.error} for n, d in data["depths"].items()
        },
    }
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


# ------------------------------------------------------------------------------ payments


def _payment_filter(request: web.Request) -> PaymentFilter:
    attention = _text_param(request, "attention")
    return PaymentFilter(
        provider=_text_param(request, "provider"),
        transaction_id=_text_param(request, "transaction_id"),
        order_id=_text_param(request, "order_id"),
        merchant=_text_param(request, "merchant"),
        state=_text_param(request, "state"),
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
        attention=attention,
    )


async def payments_page(request: web.Request) -> web.StreamResponse:
    error = None
    page = None
    try:
        flt = _payment_filter(request)
        async with _pool(request).acquire() as conn:
            page = await search_payments(conn, flt, after=_text_param(request, "after"))
    except InvalidFilter as exc:
        error = str(exc)
    query = {k: v for k, v in request.query.items() if k not in ("after", "notice", "n")}
    return render(
        request,
        "payments.html",
        status=400 if error else 200,
        error=error,
        page=page,
        query=query,
        providers=sorted({p for p, _ in _state(request).config.accounts}),
        states=sorted(RANK, key=RANK.__getitem__),
        attention_kinds=list(ATTENTION_KINDS),
    )


async def payment_page(request: web.Request) -> web.StreamResponse:
    payment_id = request.match_info["payment_id"]
    async with _pool(request).acquire() as conn:
        key = await queries.payment_key(conn, payment_id) if _is_uuid(payment_id) else None
        if key is None:
            raise web.HTTPNotFound(text="no such payment")
        provider, account, transaction_id = key
        [payment] = await payment_details(conn, provider, transaction_id, account)
        callbacks = [
            {**c, "masked": mask_callback(c["body"])}
            for c in await queries.callback_documents(conn, payment_id)
        ]
        events = await queries.events_of_payment(conn, provider, account, transaction_id)
        ids = [e["id"] for e in events]
        deliveries = await deliveries_of_events(conn, ids)
        attempts = await queries.attempts_of_events(conn, ids)
    for attempt in attempts:
        attempt["response_body"] = mask_value(attempt["response_body"] or "")
    kind = payment.get("attention") and _attention_kind(payment["attention"])
    return render(
        request,
        "payment.html",
        payment=payment,
        callbacks=callbacks,
        events=events,
        deliveries=deliveries,
        attempts=attempts,
        help=ATTENTION_HELP.get(kind) if kind else None,
    )


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _attention_kind(attention: str) -> str:
    return attention_kind(attention) or "other"


async def attention_page(request: web.Request) -> web.StreamResponse:
    kind = _text_param(request, "kind") or "any"
    error = None
    page = None
    try:
        async with _pool(request).acquire() as conn:
            page = await search_payments(
                conn, PaymentFilter(attention=kind), after=_text_param(request, "after")
            )
    except InvalidFilter as exc:
        error = str(exc)
    return render(
        request,
        "attention.html",
        status=400 if error else 200,
        error=error,
        page=page,
        kind=kind,
        kinds=list(ATTENTION_KINDS),
        help=ATTENTION_HELP,
    )


# ---------------------------------------------------------------------------- deliveries


def _delivery_filter(state: ConsoleState, params: Any) -> DeliveryFilter:
    merchants: tuple[str, ...] | None = None
    endpoint = (params.get("endpoint") or "").strip()
    merchant = (params.get("merchant") or "").strip()
    if endpoint:
        merchants = merchants_of_endpoint(state.config, endpoint)
    if merchant:
        merchants = tuple(m for m in (merchants or (merchant,)) if m == merchant)

    def when(name: str) -> datetime | None:
        text = (params.get(name) or "").strip()
        if not text:
            return None
        try:
            return parse_since(text)
        except argparse.ArgumentTypeError as exc:
            raise InvalidDeliveryFilter(f"{name}: {exc}") from None

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
    state = _state(request)
    error = None
    page = None
    total = 0
    flt = None
    try:
        flt = _delivery_filter(state, request.query)
        async with _pool(request).acquire() as conn:
            page = await search_deliveries(conn, flt, after=_text_param(request, "after"))
            total = await count_deliveries(conn, flt)
    except InvalidDeliveryFilter as exc:
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
    back = _back(request, f"{BASE}/deliveries")
    async with _pool(request).acquire() as conn:
        result = await replay_deliveries(conn, _state(request).settings, [(event_id, merchant)])
    log.info(
        "console.replayed",
        event_id=event_id,
        merchant=merchant,
        replayed=result.replayed,
        remote=request.remote,
    )
    if result.replayed == 0:
        raise _redirect(_with_notice(back, "replay-missing"))
    raise _redirect(_with_notice(back, "replayed", result.replayed))


async def replay_confirm(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    flt = _delivery_filter(state, request.query)
    async with _pool(request).acquire() as conn:
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
    flt = _delivery_filter(_state(request), request[FORM])
    job_id, _ = await _state(request).jobs.start_replay(flt, request.remote or "")
    raise _redirect(f"{BASE}/jobs/{job_id}")


async def job_page(request: web.Request) -> web.StreamResponse:
    return await _job(request, "job.html")


async def job_live(request: web.Request) -> web.StreamResponse:
    return await _job(request, "job_live.html")


async def _job(request: web.Request, template: str) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        job = await job_status(conn, request.match_info["job_id"])
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    return render(request, template, job=job)


async def job_json(request: web.Request) -> web.StreamResponse:
    async with _pool(request).acquire() as conn:
        job = await job_status(conn, request.match_info["job_id"])
    if job is None:
        return web.json_response({"error": "no such job"}, status=404)
    doc = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in job.items()}
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


# ----------------------------------------------------------------------------- endpoints


async def endpoints_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    async with _pool(request).acquire() as conn:
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
    async with _pool(request).acquire() as conn, conn.transaction():
        if action == "enable":
            await store.enable_endpoint(conn, merchant)
            parked = None
        else:
            reason = str(request[FORM].get("reason") or "").strip()[:200] or "operator"
            parked = await store.disable_endpoint(conn, merchant, reason)
    log.info("console.endpoint", merchant=merchant, action=action, remote=request.remote)
    code = "enabled" if action == "enable" else "disabled"
    raise _redirect(_with_notice(f"{BASE}/endpoints", code, parked))


# -------------------------------------------------------------------------- dead letters

_PEEK_LIMIT = 20


async def dead_letters_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
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
    moved = await replay_dead(_state(request).settings, limit, queue)
    log.info("console.dead_letters_replayed", queue=queue, moved=moved, remote=request.remote)
    raise _redirect(_with_notice(f"{BASE}/dead-letters", "moved", moved))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", overview_page)
    r.add_get("/overview/live", overview_live)
    r.add_get("/api/overview", overview_json)
    r.add_get("/payments", payments_page)
    r.add_get("/payments/{payment_id}", payment_page)
    r.add_get("/attention", attention_page)
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
