"""The console's pages that only read: overview (and its live fragment, JSON), payments,
a payment, attention. Actions are in ``actions.py``.

Handlers read the request, call the shared query functions (the ones the ``payhook`` commands
use too) and render a template.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from workers.console import queries
from workers.console.app import render
from workers.console.helpers import console_state, pool_of, text_param, time_param
from workers.console.mask import mask_callback, mask_value
from workers.ledger.queries import payment_details
from workers.ledger.search import (
    ATTENTION_KINDS,
    InvalidFilter,
    PaymentFilter,
    attention_kind,
    search_payments,
)
from workers.ledger.states import RANK
from workers.webhooks.filters import deliveries_of_events

__all__ = ["add_routes"]

log = structlog.get_logger(__name__)

# Several operators (or tabs) polling the overview share one reading per process this long.
OVERVIEW_TTL_S = 2.0

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


# ------------------------------------------------------------------------------ overview


async def _overview_data(request: web.Request) -> dict[str, Any]:
    """The overview's figures, shared for ``OVERVIEW_TTL_S`` by every page open on it."""
    state = console_state(request)
    async with state.overview_lock:
        cached = state.overview_cache
        now = time.monotonic()
        if cached is not None and now - cached[0] < OVERVIEW_TTL_S:
            return cached[1]
        data = await _read_overview(request)
        state.overview_cache = (now, data)
        return data


async def _read_overview(request: web.Request) -> dict[str, Any]:
    state = console_state(request)
    async with pool_of(request).acquire() as conn:
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
    attention = text_param(request, "attention")
    return PaymentFilter(
        provider=text_param(request, "provider"),
        transaction_id=text_param(request, "transaction_id"),
        order_id=text_param(request, "order_id"),
        merchant=text_param(request, "merchant"),
        state=text_param(request, "state"),
        since=time_param(request, "since"),
        until=time_param(request, "until"),
        attention=attention,
    )


async def payments_page(request: web.Request) -> web.StreamResponse:
    error = None
    page = None
    try:
        flt = _payment_filter(request)
        async with pool_of(request).acquire() as conn:
            page = await search_payments(conn, flt, after=text_param(request, "after"))
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
        providers=sorted({p for p, _ in console_state(request).config.accounts}),
        states=sorted(RANK, key=RANK.__getitem__),
        attention_kinds=list(ATTENTION_KINDS),
    )


async def payment_page(request: web.Request) -> web.StreamResponse:
    payment_id = request.match_info["payment_id"]
    async with pool_of(request).acquire() as conn:
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
    kind = text_param(request, "kind") or "any"
    error = None
    page = None
    try:
        async with pool_of(request).acquire() as conn:
            page = await search_payments(
                conn, PaymentFilter(attention=kind), after=text_param(request, "after")
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


def add_routes(app: web.Application) -> None:
    from workers.console import actions

    r = app.router
    r.add_get("/", overview_page)
    r.add_get("/overview/live", overview_live)
    r.add_get("/api/overview", overview_json)
    r.add_get("/payments", payments_page)
    r.add_get("/payments/{payment_id}", payment_page)
    r.add_get("/attention", attention_page)
    actions.add_routes(app)
