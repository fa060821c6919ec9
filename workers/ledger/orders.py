"""Registering an order expectation, and what it releases.

A callback that arrived before its order's expectation (or under terms since corrected) was
held: recorded as ``no_expectation`` or ``amount_mismatch``, with no money moved. Holding it
forever would leave a genuine payment uncredited with nothing left to send it again (the
provider got its ack). So whenever an expectation is registered, every held callback of that
order is decided again under it, as a new fact of its own: the same callback with
``variant`` marked by the expectation's terms. Its id is therefore deterministic — repeating the
registration, or a crash between the registration and the release followed by a redelivery,
decides nothing twice — and the payment's history keeps both the hold and the release.

Used by ``POST /orders`` on the admin listener and by the ``<ns>.orders`` consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from contracts.callbacks import CallbackReceived, decode_callback
from contracts.config import Config
from contracts.topology import Topology
from runtime.consume import handle_message
from runtime.errors import PermanentFailure
from workers.ledger.apply import ApplyResult, Incoming, Policy, apply_with_retry
from workers.ledger.decide import RELEASE_MARK
from workers.ledger.expectations import (
    Expectation,
    InvalidExpectation,
    Registration,
    parse_expectation,
    register_expectation,
)

__all__ = ["RELEASE_MARK", "consume_orders", "register_order", "released_variant"]

log = structlog.get_logger(__name__)

# A callback was held under the order it names itself, or, naming none, under its payment's
# (apply.py looks expectations up the same way). Its own order id may be one the payment's row
# does not carry: a held callback teaches the payment nothing. Both halves are indexed
# (callbacks_held_order; payments_order_id with callbacks_payment).
_HELD = """
SELECT c.seq, c.body::text AS body, c.correlation_id
FROM callbacks c JOIN payments p ON p.id = c.payment_id
WHERE c.body ->> 'order_id' = $3 AND p.provider = $1 AND p.account = $2
  AND c.outcome IN ('no_expectation', 'amount_mismatch')
UNION
SELECT c.seq, c.body::text AS body, c.correlation_id
FROM payments p JOIN callbacks c ON c.payment_id = p.id
WHERE p.provider = $1 AND p.account = $2 AND p.order_id = $3
  AND c.body ->> 'order_id' IS NULL
  AND c.outcome IN ('no_expectation', 'amount_mismatch')
ORDER BY seq
"""


def released_variant(callback: CallbackReceived, exp: Expectation) -> str:
    """The variant of ``callback`` decided again under ``exp``'s terms."""
    terms = f"{exp.merchant}|{exp.amount}|{exp.currency}|{exp.test}".encode()
    base = callback.variant.split(RELEASE_MARK, 1)[0]
    return f"{base}{RELEASE_MARK}{hashlib.sha256(terms).hexdigest()[:16]}"


async def register_order(
    pool: asyncpg.Pool[Any], exp: Expectation, policy: Policy
) -> tuple[Registration, ApplyResult]:
    """Register ``exp``; unless that was refused, decide the order's held callbacks again."""
    async with pool.acquire() as conn:
        result = await register_expectation(conn, exp)
        if result == "conflict":
            return result, ApplyResult()
        # "unchanged" too: a crash may have come between an earlier registration and its
        # release; the deterministic ids make a repeat free of effects.
        held = await conn.fetch(_HELD, exp.provider, exp.account, exp.order_id)
    items: list[Incoming] = []
    for row in held:
        original = decode_callback(row["body"].encode())
        again = replace(original, variant=released_variant(original, exp))
        items.append(Incoming.of(again, row["correlation_id"]))
    if not items:
        return result, ApplyResult()
    applied = await apply_with_retry(pool, items, policy)
    log.info(
        "ledger.held_callbacks_released",
        provider=exp.provider,
        account=exp.account,
        order_id=exp.order_id,
        decided_again=applied.recorded,
        outcomes=dict(applied.outcomes),
    )
    return result, applied


async def consume_orders(
    channel: AbstractChannel,
    topology: Topology,
    pool: asyncpg.Pool[Any],
    config: Config,
    stop: asyncio.Event,
    lost: asyncio.Event,
) -> Callable[[], Awaitable[None]]:
    """Register expectations from ``<ns>.orders``; returns the coroutine function that stops it.

    Ack after the commit. An invalid document is a permanent failure (dead-lettered to
    ``<ns>.orders.dead`` with a log line saying why); a database outage is waited out with the
    message held (``runtime.consume``).
    """
    queue = await channel.get_queue(topology.orders_queue, ensure=False)
    policy = Policy.from_config(config)

    async def register(message: AbstractIncomingMessage) -> None:
        try:
            exp = parse_expectation(orjson.loads(message.body), config)
        except (orjson.JSONDecodeError, InvalidExpectation) as exc:
            raise PermanentFailure(f"invalid order expectation: {exc}") from None
        result, _ = await register_order(pool, exp, policy)
        (log.warning if result == "conflict" else log.info)(
            "ledger.order_registered",
            provider=exp.provider,
            account=exp.account,
            order_id=exp.order_id,
            result=result,
        )

    async def on_message(message: AbstractIncomingMessage) -> None:
        await handle_message(message, register, stop=stop, lost=lost)

    tag = await queue.consume(on_message, no_ack=False)

    async def cancel() -> None:
        with contextlib.suppress(Exception):
            await queue.cancel(tag)

    return cancel
