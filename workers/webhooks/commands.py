"""``payhook webhooks …``: attempt history, failed deliveries, replay, enable/disable.

    payhook webhooks attempts <event-id>
    payhook webhooks failed [--merchant M] [--since T]
    payhook webhooks replay <event-id>... [--merchant M]
    payhook webhooks replay --failed [--merchant M] [--since T]
    payhook webhooks enable <merchant>
    payhook webhooks disable <merchant> [--reason TEXT]

``T`` is an ISO 8601 time (``2024-05-01T12:00``, UTC unless it says otherwise) or an age
(``90s``, ``15m``, ``2h``, ``3d``). A replay re-queues the event for a fresh schedule (attempt
1, a new round) with the body read back from the ``events`` table, so the event id and the
payload are the ones the merchant may already have seen.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from contracts.config import Config, Settings
from contracts.topology import Topology
from workers import amqp, db
from workers.webhooks import store
from workers.webhooks.consumer import subscribed
from workers.webhooks.messages import replay_message
from workers.webhooks.progress import Progress
from workers.webhooks.table import render

__all__ = ["parse_since", "register"]

_REPLAY_BATCH = 200
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("webhooks", help="merchant webhook deliveries")
    sub = parser.add_subparsers(dest="webhooks_command", metavar="COMMAND", required=True)

    p = sub.add_parser("attempts", help="the attempt history of one event")
    p.add_argument("event_id")
    p.set_defaults(handler=attempts_command)

    p = sub.add_parser("failed", help="deliveries that are failed, parked or failing")
    _filters(p)
    p.set_defaults(handler=failed_command)

    p = sub.add_parser("replay", help="re-queue deliveries for a fresh schedule")
    p.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    p.add_argument("--failed", action="store_true", help="every failed or parked delivery")
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
    parser.add_argument(
        "--since", type=parse_since, help="changed at or after T (ISO time or age: 2h, 3d)"
    )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    match = _AGE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor an age like 2h"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


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
    conn = await db.connect(settings.database_url)
    try:
        rows = await store.deliveries_needing_attention(
            conn, merchant=args.merchant, since=args.since, include_failing=True
        )
    finally:
        await conn.close()
    table = [
        [
            r["event_id"],
            r["merchant"],
            r["event_type"],
            r["state"],
            str(r["attempts"]),
            _time(r["last_attempt_at"]),
            str(r["last_status"] or "") or (r["last_error"] or ""),
            _time(r["next_attempt_at"]),
        ]
        for r in rows
    ]
    header = ["EVENT", "MERCHANT", "TYPE", "STATE", "ATTEMPTS", "LAST", "LAST ERROR", "NEXT"]
    print(render(header, table))
    print(f"{len(rows)} deliveries", file=sys.stderr)
    return 0


async def replay_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    if args.failed == bool(args.event_ids):
        print("replay: give event ids, or --failed (not both)", file=sys.stderr)
        return 2
    if args.event_ids and args.since is not None:
        print("replay: --since goes with --failed", file=sys.stderr)
        return 2
    conn = await db.connect(settings.database_url)
    try:
        if args.failed:
            rows = await store.deliveries_needing_attention(
                conn, merchant=args.merchant, since=args.since
            )
            pairs = [(r["event_id"], r["merchant"]) for r in rows]
            problems: list[str] = []
        else:
            pairs, problems = await _explicit_targets(
                conn, args.event_ids, args.merchant, load_config
            )
        pairs = list(dict.fromkeys(pairs))
        for problem in problems:
            print(f"replay: {problem}", file=sys.stderr)
        replayed = await _replay(conn, settings, pairs, bulk=args.failed or len(pairs) > 1)
    finally:
        await conn.close()
    print(f"replayed {replayed} deliveries")
    return 1 if problems or replayed < len(pairs) else 0


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


async def _replay(
    conn: asyncpg.Connection[Any],
    settings: Settings,
    pairs: Sequence[tuple[str, str]],
    *,
    bulk: bool,
) -> int:
    """Start a new round for each pair and publish it, batch by batch, with confirms."""
    if not pairs:
        return 0
    topology = Topology(settings.amqp_namespace)
    connection = await amqp.connect(settings.amqp_url, name="payhook-webhooks-replay")
    progress = Progress(len(pairs), label="replay", enabled=bulk)
    replayed = 0
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # Declared here too, so a replay before the first worker start still has its queue.
        await amqp.declare_topology(channel, topology)
        for start in range(0, len(pairs), _REPLAY_BATCH):
            batch = list(dict.fromkeys(pairs[start : start + _REPLAY_BATCH]))
            events = await store.events_by_id(conn, [e for e, _ in batch])
            for e, m in batch:
                if e not in events:
                    print(f"replay: event {e} ({m}) is not in the events table", file=sys.stderr)
            batch = [(e, m) for e, m in batch if e in events]
            async with conn.transaction():
                rounds = await store.start_rounds(
                    conn, [(e, m, events[e]["type"]) for e, m in batch]
                )
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            replay_message(
                                events[e]["body"], m, rounds[(e, m)], events[e]["correlation_id"]
                            ),
                            routing_key=topology.webhooks_queue,
                            mandatory=True,
                            timeout=settings.publish_timeout_s,
                        )
                        for e, m in batch
                    )
                )
            replayed += len(batch)
            progress.update(len(batch))
    finally:
        progress.close()
        await connection.close()
    return replayed


async def enable_command(
    args: argparse.Namespace, settings: Settings, load_config: ConfigLoader
) -> int:
    conn = await db.connect(settings.database_url)
    try:
        was_disabled = await store.enable_endpoint(conn, args.merchant)
        parked = await store.deliveries_needing_attention(
            conn, merchant=args.merchant, since=None, states=("parked",)
        )
    finally:
        await conn.close()
    print(f"{args.merchant}: enabled" + ("" if was_disabled else " (was not disabled)"))
    if parked:
        print(
            f"{len(parked)} parked deliveries; to send them: "
            f"payhook webhooks replay --failed --merchant {args.merchant}",
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
