"""``payhook payments …`` and ``payhook ledger …``: what an operator asks the ledger.

    payhook payments show <provider> <transaction-id> [--account A] [--json]
    payhook payments list [--provider P] [--transaction-id T] [--order O] [--merchant M]
                          [--state S] [--since T] [--until T] [--attention [KIND]]
                          [--limit N] [--after CURSOR] [--json]
    payhook ledger balances [--merchant M] [--json]
    payhook ledger check [--json]          exit 1 on any breached invariant
    payhook ledger replay-dead [--limit N] [--queue ledger|orders]
                                        move <ns>.ledger.dead (or <ns>.orders.dead) back

``replay-dead`` is for after a fix: the messages go back to the ledger queue with their
headers (minus the dead-letter bookkeeping), and are applied as if new; those already
applied are duplicates and change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any

import aio_pika
import orjson

from contracts.config import Config, Settings
from contracts.errors import ContractError
from contracts.money import format_major
from contracts.topology import Topology
from workers import amqp, db
from workers.ledger.check import check_ledger
from workers.ledger.consumer import HEADER_ERROR, HEADER_FAILED_AT
from workers.ledger.queries import balances, payment_details
from workers.ledger.search import ATTENTION_KINDS, InvalidFilter, PaymentFilter, search_payments
from workers.ledger.states import RANK
from workers.webhooks.table import render
from workers.when import parse_since

__all__ = ["HEADER_REPLAYED", "register", "replay_dead"]

HEADER_REPLAYED = "x-payhook-replayed"
# Bookkeeping of the previous life; the broker writes fresh ones if it dies again.
_STRIP = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
        HEADER_ERROR,
        HEADER_FAILED_AT,
    }
)
_CREDIT_NORMAL = ("merchant_balance:", "provider_fees:", "unallocated:")

ConfigLoader = Callable[[], Config]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    payments = subparsers.add_parser("payments", help="look at payments in the ledger")
    psub = payments.add_subparsers(dest="payments_command", metavar="COMMAND", required=True)
    p = psub.add_parser("show", help="state, history and postings of one payment")
    p.add_argument("provider")
    p.add_argument("transaction_id", metavar="transaction-id")
    p.add_argument("--account", help="the provider account (when the id exists in several)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=show_command)
    p = psub.add_parser("list", help="search payments, newest first (the console's filters)")
    p.add_argument("--provider")
    p.add_argument("--transaction-id", dest="transaction_id")
    p.add_argument("--order", dest="order_id", help="the merchant's order id")
    p.add_argument("--merchant")
    p.add_argument("--state", choices=sorted(RANK))
    p.add_argument("--since", type=parse_since, help="created at or after T (ISO time or 2h)")
    p.add_argument("--until", type=parse_since, help="created before T")
    p.add_argument(
        "--attention",
        nargs="?",
        const="any",
        choices=("any", *ATTENTION_KINDS),
        help="only payments waiting for an operator (of this kind: held, mismatch, "
        "conflict, invalid)",
    )
    p.add_argument("--limit", type=int, default=50, help="per page (default 50, at most 500)")
    p.add_argument("--after", metavar="CURSOR", help="the next page (printed after a page)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=list_command)

    ledger = subparsers.add_parser("ledger", help="ledger balances, invariants, dead letters")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    p = lsub.add_parser("balances", help="balance per account and currency")
    p.add_argument("--merchant", help="only this merchant's balance")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=balances_command)
    p = lsub.add_parser("check", help="recompute every invariant; exit 1 on a breach")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=check_command)
    p = lsub.add_parser("replay-dead", help="move dead-lettered messages back to the ledger")
    p.add_argument("--limit", type=int, help="at most this many (default: all there now)")
    p.add_argument(
        "--queue",
        choices=sorted(_DEAD_QUEUES),
        default="ledger",
        help="whose dead letters: callbacks (ledger, default) or order expectations (orders)",
    )
    p.set_defaults(handler=replay_dead_command)


def _money(amount: int | None, currency: str | None) -> str:
    if amount is None:
        return "-"
    if currency is None:
        return str(amount)
    try:
        return f"{format_major(amount, currency)} {currency}"
    except ContractError:
        return f"{amount} {currency} (minor units)"


def _print_payment(p: Mapping[str, Any]) -> None:
    cur = p["currency"]
    mode = "test" if p["test"] else "live"
    print(f"{p['provider']}/{p['account']}/{p['transaction_id']}  {p['kind']}  {mode}")
    print(f"  state      {p['state']}")
    print(f"  merchant   {p['merchant'] or '-'}   order {p['order_id'] or '-'}")
    print(f"  amount     {_money(p['amount'], cur)}")
    print(
        f"  paid       {_money(p['paid'], cur)}   refunded {_money(p['refunded'], cur)}"
        f"   fee {_money(p['fee'], p['fee_currency'] or cur)}"
    )
    if p["attention"]:
        print(f"  attention  {p['attention']}")
    exp = p["expectation"]
    if exp is not None:
        emode = "test" if exp["test"] else "live"
        print(
            f"  expected   {_money(exp['amount'], exp['currency'])} {emode} for {exp['merchant']}"
        )
    print("  history")
    for h in p["history"]:
        when = str(h["recorded_at"])[:19].replace("T", " ")
        reason = f"  ({h['reason']})" if h["reason"] else ""
        print(
            f"    {when}  {h['status']:<18} {h['outcome']:<15}"
            f" {h['state_before']} -> {h['state_after']}"
            f"  [provider {h['provider_status']!s}, corr {h['correlation_id'] or '-'}]{reason}"
        )
    print("  postings")
    if not p["postings"]:
        print("    (none)")
    entry = None
    for leg in p["postings"]:
        if leg["entry_id"] != entry:
            entry = leg["entry_id"]
            print(f"    entry {entry}  {leg['memo']}")
        side = "Dr" if leg["amount"] > 0 else "Cr"
        print(f"      {side} {leg['account']:<48} {_money(abs(leg['amount']), leg['currency'])}")


async def show_command(args: argparse.Namespace, settings: Settings, _: ConfigLoader) -> int:
    conn = await db.connect(settings.database_url)
    try:
        found = await payment_details(conn, args.provider, args.transaction_id, args.account)
    finally:
        await conn.close()
    if not found:
        print(f"no payment {args.provider} {args.transaction_id}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(found, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    for payment in found:
        _print_payment(payment)
    return 0


async def list_command(args: argparse.Namespace, settings: Settings, _: ConfigLoader) -> int:
    try:
        flt = PaymentFilter(
            provider=args.provider,
            transaction_id=args.transaction_id,
            order_id=args.order_id,
            merchant=args.merchant,
            state=args.state,
            since=args.since,
            until=args.until,
            attention=args.attention,
        )
        conn = await db.connect(settings.database_url)
        try:
            page = await search_payments(conn, flt, limit=args.limit, after=args.after)
        finally:
            await conn.close()
    except InvalidFilter as exc:
        print(f"payments list: {exc}", file=sys.stderr)
        return 2
    if args.json:
        doc = {"payments": page.rows, "next": page.next_cursor}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    rows = [
        [
            str(r["created_at"])[:19],
            f"{r['provider']}/{r['account']}",
            r["transaction_id"],
            r["kind"],
            r["state"],
            r["merchant"] or "-",
            r["order_id"] or "-",
            _money(r["amount"], r["currency"]),
            r["attention"] or "",
        ]
        for r in page.rows
    ]
    header = ["CREATED", "PROVIDER", "TRANSACTION", "KIND", "STATE", "MERCHANT", "ORDER"]
    print(render([*header, "AMOUNT", "ATTENTION"], rows))
    print(f"{len(rows)} payments", file=sys.stderr)
    if page.next_cursor is not None:
        print(f"more: --after {page.next_cursor}", file=sys.stderr)
    return 0


async def balances_command(args: argparse.Namespace, settings: Settings, _: ConfigLoader) -> int:
    conn = await db.connect(settings.database_url)
    try:
        rows = await balances(conn, args.merchant)
    finally:
        await conn.close()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if not rows:
        print("no postings" + (f" for merchant {args.merchant}" if args.merchant else ""))
        return 0
    # Liabilities and income are shown as positive credits: "owed to the merchant: 12.50".
    for row in rows:
        name = row["account"].removeprefix("test:")
        credit = name.startswith(_CREDIT_NORMAL)
        shown = -row["balance"] if credit else row["balance"]
        side = "credit" if credit else "debit"
        print(f"{row['account']:<56} {side:<6} {_money(shown, row['currency']):>20}")
    return 0


async def check_command(args: argparse.Namespace, settings: Settings, _: ConfigLoader) -> int:
    conn = await db.connect(settings.database_url)
    try:
        report = await check_ledger(conn)
    finally:
        await conn.close()
    if args.json:
        doc = {
            "ok": report.ok,
            "breaches": report.breaches,
            "counts": report.counts,
            "unlisted_breaches": report.hidden,
        }
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        counts = ", ".join(f"{k}={v}" for k, v in report.counts.items())
        for breach in report.breaches:
            print(f"BREACH {breach}")
        if report.hidden:
            print(f"... and {report.hidden} more")
        print(f"ledger check: {'ok' if report.ok else 'FAILED'} ({counts})")
    return 0 if report.ok else 1


# dead-letter queue -> the queue its messages came from
_DEAD_QUEUES: dict[str, Callable[[Topology], tuple[str, str]]] = {
    "ledger": lambda t: (t.ledger_dead_queue, t.ledger_queue),
    "orders": lambda t: (t.orders_dead_queue, t.orders_queue),
}


# How long replay-dead keeps looking for messages the queue's count promised (20 x 0.1 s).
_EMPTY_GETS = 20
_EMPTY_GET_PAUSE_S = 0.1


async def replay_dead(settings: Settings, limit: int | None = None, queue: str = "ledger") -> int:
    """Move up to ``limit`` messages (default: those there now) from a dead queue back."""
    topology = Topology(settings.amqp_namespace)
    dead_name, target = _DEAD_QUEUES[queue](topology)
    connection = await amqp.connect(settings.amqp_url, name="payhook-ledger-replay-dead")
    moved = 0
    try:
        channel = await connection.channel(publisher_confirms=True)
        await amqp.declare_topology(channel, topology)
        dead = await channel.declare_queue(dead_name, passive=True)
        # Only what is there now: a message that dies again while we run waits for next time.
        there = dead.declaration_result.message_count or 0
        budget = there if limit is None else min(limit, there)
        empty_gets = 0
        while moved < budget:
            message = await dead.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                # Counted, yet not there: a message a peek just handed back (a nack with
                # requeue, from another channel) can be a moment away from being gettable
                # again on a quorum queue. Look again for a while before calling it gone.
                empty_gets += 1
                if empty_gets > _EMPTY_GETS:
                    break
                await asyncio.sleep(_EMPTY_GET_PAUSE_S)
                continue
            headers = {k: v for k, v in (message.headers or {}).items() if k not in _STRIP}
            previous = headers.get(HEADER_REPLAYED)
            headers[HEADER_REPLAYED] = (previous if isinstance(previous, int) else 0) + 1
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    message_id=message.message_id,
                    correlation_id=message.correlation_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=target,
            )
            await message.ack()  # only after the broker confirmed the copy
            moved += 1
    finally:
        await connection.close()
    return moved


async def replay_dead_command(args: argparse.Namespace, settings: Settings, _: ConfigLoader) -> int:
    moved = await replay_dead(settings, args.limit, args.queue)
    dead_name = _DEAD_QUEUES[args.queue](Topology(settings.amqp_namespace))[0]
    print(f"replayed {moved} message(s) from {dead_name}")
    return 0
