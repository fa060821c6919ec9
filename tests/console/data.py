"""Ledger and delivery rows for console tests, written the way payhook writes them."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.statuses import Status
from tests.ledger.factory import callback
from tests.webhooks.helpers import insert_events, make_event
from workers.ledger.apply import Incoming, Policy, apply_batch

from .conftest import console_config

SECRET_QUERY = "uid=12345&email=payer%40example.com&ss1=s3cr3tsignature"
SECRET_HEADER = "c2VjcmV0LXNpZ25hdHVyZQ=="


def with_raw(cb: CallbackReceived, query: str = SECRET_QUERY) -> CallbackReceived:
    raw = RawRequest(
        method="POST",
        path=f"/callbacks/{cb.provider}/{cb.account}",
        query_string=query,
        body=b'{"data": {"attributes": {"customer_phone": "+37060012345", "status": "ok"}}}',
        headers={"X-Signature": SECRET_HEADER},
        remote="203.0.113.9",
    )
    return dataclasses.replace(cb, raw=raw)


async def apply(conn: Any, *callbacks: CallbackReceived) -> None:
    policy = Policy.from_config(console_config())
    await apply_batch(conn, [Incoming.of(cb) for cb in callbacks], policy)


async def ledger(conn: Any) -> dict[str, str]:
    """Seven payments: providers, states, a hold, a conflict; returns name -> payment id."""
    await apply(
        conn,
        with_raw(callback(Status.SUCCEEDED, "PS-1", order_id="ORD-1")),
        callback(Status.PENDING, "PS-2", order_id="ORD-2"),
        callback(Status.SUCCEEDED, "PC-1", provider="paycore", currency="USD", order_id="ORD-3"),
        callback(Status.FAILED, "PC-2", provider="paycore", currency="USD", order_id="ORD-4"),
        # Proven by the source address only, no expectation: held.
        callback(Status.SUCCEEDED, "SP-1", provider="paysepro", order_id="ORD-5"),
    )
    # succeeded after failed: a conflict (another batch, so it sees the failed state).
    await apply(conn, callback(Status.SUCCEEDED, "PC-2", provider="paycore", currency="USD",
                               order_id="ORD-4"))  # fmt: skip
    await apply(conn, callback(Status.REFUNDED, "PS-3", order_id="ORD-6"))
    rows = await conn.fetch("SELECT id, transaction_id FROM payments")
    return {r["transaction_id"]: str(r["id"]) for r in rows}


async def deliveries(database_url: str, conn: asyncpg.Connection) -> dict[str, str]:
    """One delivery per state (and an untried pending one); returns state -> event id."""
    states = {
        "failing": ("pending", 1, "shop"),
        "failed": ("failed", 4, "shop"),
        "parked": ("parked", 1, "other"),
        "delivered": ("delivered", 1, "shop"),
        "fresh": ("pending", 0, "shop"),
    }
    events = {name: make_event(merchant) for name, (_, _, merchant) in states.items()}
    await insert_events(database_url, events.values())
    for name, (state, attempts, merchant) in states.items():
        await conn.execute(
            "INSERT INTO webhook_deliveries (event_id, merchant, event_type, state, attempts,"
            " last_status, last_error) VALUES ($1, $2, $3, $4, $5, 500, 'http_error')",
            events[name]["id"],
            merchant,
            events[name]["type"],
            state,
            attempts,
        )
    return {name: e["id"] for name, e in events.items()}


def new_id() -> str:
    return str(uuid.uuid4())
