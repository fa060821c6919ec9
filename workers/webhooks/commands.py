"""``payhook webhooks …``: attempt history, failed deliveries, replay, enable/disable.

    payhook webhooks attempts <event-id>
    payhook webhooks failed [FILTERS]
    payhook webhooks replay <event-id>... [--merchant M]
    payhook webhooks replay --failed [FILTERS]        (or any --state: the same filters)
    payhook webhooks enable <merchant>
    payhook webhooks disable <merchant> [--reason TEXT]

    FILTERS: [--state failing|failed|parked|dead]... [--merchant M] [--endpoint URL]
             [--since T] [--until T]

``failed`` lists, and ``replay --failed`` replays, the very same deliveries for the same
filters (``workers.webhooks.filters``; by default failing, failed and parked ones). ``T`` is
an ISO 8601 time (``2024-05-01T12:00``, UTC unless it says otherwise) or an age (``90s``,
``15m``, ``2h``, ``3d``). A replay re-queues the event for a fresh schedule (attempt 1, a new
round) with the body read back from the ``events`` table, so the event id and the payload are
the ones the merchant may already have seen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from contracts.config import Config, Settings
from workers import db
from workers.webhooks import store
from workers.webhooks.consumer import subscribed
from workers.webhooks.filters import (
    STATES,
    DeliveryFilter,
    count_deliveries,
    list_deliveries,
    merchants_of_endpoint,
)
from workers.webhooks.progress import Progress
from workers.webhooks.replay import replay_deliveries
from workers.webhooks.table import render
from workers.when import parse_since

__all__ = ["delivery_filter", "parse_since", "register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("webhooks", help="merchant webhook deliveries")
    sub = parser.add_subparsers(dest="webhooks_command", metavar="COMMAND", required=True)

    p = sub.add_parser("attempts", help="the attempt history of one event")
    p.add_argument("event_id")
    p.set_defaults(handler=attempts_command)

    p = sub.add_parser("failed", help="deliveries that are failing, failed or parked")
    _filters(p)
    p.set_defaults(handler=failed_command)

    p = sub.add_parser("replay", help="re-queue deliveries for a fresh schedule")
    p.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    p.add_argument(
        "--failed",
        action="store_true",
        help="every delivery 'webhooks failed' lists for the same filters",
    )
    _filters(p)
    p.set_defaults(handler=replay_command)

    p = sub.add_parser("enable", help="deliver to a merchant again (after a 410 or disable)")
    p.add_argument("merchant")
    p.set_defaults(handler=enable_command)

    p = sub.add_parser("disable", help="stop delivering to a merchant; deliveries are parked")
    p.add_argument("merchant")
    p.add_argument("--reason", default="operator")
    p.set_defaults(handler=disable_command)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--merchant", help="only this merchant")
    parser.add_argument("--endpoint", help="only merchants whose webhook URL is this")
    parser.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help="failing (retry scheduled), failed (schedule used up), parked (endpoint "
        "disabled), dead (failed or parked); repeatable; default: failing, failed, parked",
    )
    parser.add_argument(
        "--since", type=parse_since, help="changed at or after T (ISO time or age: 2h, 3d)"
    )
    parser.add_argument("--until", type=parse_since, help="changed before T")


def delivery_filter(args: argparse.Namespace, load_config: Callable[[], Config]) -> DeliveryFilter:
    """The filter of ``webhooks failed`` and ``webhooks replay --failed``: one for both."""
    merchants: tuple[str, ...] | None = None
    if args.endpoint is not None:
        merchants = merchants_of_endpoint(load_config(), args.endpoint)
    if args.merchant is not None:
        # With an endpoint too: that endpoint's merchants, if it is one of them.
        merchants = (
            (args.merchant,)
            if merchants is None
            else tuple(m for m in merchants if m == args.merchant)
        )
    return DeliveryFilter(
        states=tuple(args.state or ()), merchants=merchants, since=args.since, until=args.until
    )


ConfigLoader = Callable[[], Config]


async def attempts_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    conn = await db.connect(settings.database_url)
    try:
        deliveries = await store.deliveries_for_events(conn, [args.event_id])
        attempts = await store.attempts_for_event(conn, args.event_id)
    finally:
        await conn.close()
    if not deliveries:
        print(f"no deliveries for event {args.event_id}", file=sys.stderr)
        return 1
    for d in deliveries:
        print(f"{d['merchant']}: {d['state']}, {d['attempts']} attempts, round {d['round']}")
    rows = [
        [
            a["merchant"],
            str(a["round"]),
            str(a["attempt"]),
            _time(a["started_at"]),
            "" if a["duration_ms"] is None else f"{a['duration_ms']} ms",
            "" if a["status_code"] is None else str(a["status_code"]),
            a["error_class"] or ("" if a["finished_at"] else "unfinished"),
            _next(a["next_action"], a["next_delay_s"]),
            _snippet(a["response_body"]),
        ]
        for a in attempts
    ]
    header = ["MERCHANT", "ROUND", "ATTEMPT", "STARTED", "TOOK", "STATUS", "ERROR", "THEN", "BODY"]
    print(render(header, rows))
    return 0


async def failed_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    flt = delivery_filter(args, load_config)
    conn = await db.connect(settings.database_url)
    try:
        rows = await list_deliveries(conn, flt)
    finally:
        await conn.close()
    table = [
        [
            r["event_id"],
            r["merchant"],
            r["event_type"],
            _shown_state(r),
            str(r["attempts"]),
            _time(r["last_attempt_at"]),
            str(r["last_status"] or "") or (r["last_error"] or ""),
            _time(r["next_attempt_at"]),
        ]
        for r in rows
    ]
    header = ["EVENT", "MERCHANT", "TYPE", "STATE", "ATTEMPTS", "LAST", "LAST ERROR", "NEXT"]
    print(render(header, table))
    print(f"{len(rows)} deliveries ({flt.describe()})", file=sys.stderr)
    return 0


def _shown_state(row: Any) -> str:
    return "failing" if row["state"] == "pending" else str(row["state"])


async def replay_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    by_filter = args.failed or bool(args.state)
    if by_filter == bool(args.event_ids):
        print("replay: give event ids, or --failed/--state (not both)", file=sys.stderr)
        return 2
    if args.event_ids and (args.since, args.until, args.endpoint) != (None, None, None):
        print("replay: --since, --until and --endpoint go with --failed/--state", file=sys.stderr)
        return 2
    conn = await db.connect(settings.database_url)
    try:
        if by_filter:
            rows = await list_deliveries(conn, delivery_filter(args, load_config))
            pairs = [(r["event_id"], r["merchant"]) for r in rows]
            problems: list[str] = []
        else:
            pairs, problems = await _explicit_targets(
                conn, args.event_ids, args.merchant, load_config
            )
        pairs = list(dict.fromkeys(pairs))
        for problem in problems:
            print(f"replay: {problem}", file=sys.stderr)
        progress = Progress(len(pairs), label="replay", enabled=by_filter or len(pairs) > 1)
        try:
            result = await replay_deliveries(conn, settings, pairs, progress.update)
        finally:
            progress.close()
    finally:
        await conn.close()
    for e, m in result.missing:
        print(f"replay: event {e} ({m}) is not in the events table", file=sys.stderr)
    print(f"replayed {result.replayed} deliveries")
    return 1 if problems or result.replayed < len(pairs) else 0


async def _explicit_targets(
    conn: asyncpg.Connection[Any],
    event_ids: Sequence[str],
    merchant: str | None,
    load_config: ConfigLoader,
) -> tuple[list[tuple[str, str]], list[str]]:
    """(event, merchant) pairs for named events: their deliveries, else their subscriber."""
    known: dict[str, list[str]] = {}
    for row in await store.deliveries_for_events(conn, event_ids):
        known.setdefault(row["event_id"], []).append(row["merchant"])
    events = await store.events_by_id(conn, event_ids)
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    config: Config | None = None
    for event_id in dict.fromkeys(event_ids):
        if event_id not in events:
            problems.append(f"event {event_id} is not in the events table")
            continue
        merchants = known.get(event_id, [])
        if merchant is not None:
            merchants = [merchant]
        elif not merchants:
            # Never delivered (not subscribed then, or the worker never saw it): ask the config.
            config = config or load_config()
            row = events[event_id]
            subscriber = config.merchant_for(row["provider"], row["account"])
            if subscriber is not None and subscribed(subscriber.events, row["type"]):
                merchants = [subscriber.id]
        if not merchants:
            problems.append(f"event {event_id} has no merchant to deliver to")
        pairs.extend((event_id, m) for m in merchants)
    return pairs, problems


async def enable_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    conn = await db.connect(settings.database_url)
    try:
        was_disabled = await store.enable_endpoint(conn, args.merchant)
        parked = await count_deliveries(
            conn, DeliveryFilter(states=("parked",), merchants=(args.merchant,))
        )
    finally:
        await conn.close()
    print(f"{args.merchant}: enabled" + ("" if was_disabled else " (was not disabled)"))
    if parked:
        print(
            f"{parked} parked deliveries; to send them: "
            f"payhook webhooks replay --state parked --merchant {args.merchant}",
            file=sys.stderr,
        )
    return 0


async def disable_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    conn = await db.connect(settings.database_url)
    try:
        async with conn.transaction():
            parked = await store.disable_endpoint(conn, args.merchant, args.reason)
    finally:
        await conn.close()
    print(f"{args.merchant}: disabled ({parked} pending deliveries parked)")
    return 0


def _time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _next(action: str | None, delay: float | None) -> str:
    if action == "retry":
        return f"retry in {delay:g} s"
    return action or ""


def _snippet(body: str | None, width: int = 40) -> str:
    text = " ".join((body or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"
