"""``payhook simulate <provider> …``: send one provider callback to a running ingress.

    payhook simulate paysera --account main --order ORD-1 --amount 12.50 --currency EUR \\
        --status succeeded --retries --time-scale 0.001
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from typing import Any

from contracts.config import Config, Settings
from contracts.errors import ContractError
from ingress.providers import PROVIDERS
from ingress.providers.base import Rejected, SimulatedPayment
from ingress.simulator import simulate_and_send

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="send a provider callback to the ingress, as that provider would",
        description="Build a callback exactly as the provider would (signed with the "
        "account's secret from the config), send it, print the request and the answer.",
    )
    parser.add_argument("provider", choices=sorted(PROVIDERS))
    parser.add_argument("--account", required=True, help="account name in the config")
    parser.add_argument("--order", required=True, help="the merchant's order id")
    parser.add_argument("--amount", required=True, help="major units, e.g. 12.50")
    parser.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    parser.add_argument("--status", default="succeeded", help="normalized status to send")
    parser.add_argument("--transaction-id", help="provider transaction id (default: random)")
    parser.add_argument("--test", action="store_true", help="mark it a test-mode payment")
    parser.add_argument("--kind", choices=("payment", "payout"), default="payment")
    parser.add_argument("--url", help="default: the ingress from PAYHOOK_LISTEN_HOST/PORT")
    parser.add_argument(
        "--retries", action="store_true", help="resend on the provider's schedule until acked"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply the retry delays (0.001: demos)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider-specific knob (see docs/providers.md), repeatable",
    )
    parser.set_defaults(handler=_simulate)


def default_url(settings: Settings, provider: str, account: str) -> str:
    host = settings.listen_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a bind-all address is not a destination
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.listen_port}/callbacks/{provider}/{account}"


async def _simulate(
    args: argparse.Namespace, settings: Settings, load_config: Callable[[], Config]
) -> int:
    extra: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"payhook simulate: --set {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        extra[key] = value
    config = load_config()
    account = config.account(args.provider, args.account)
    if account is None:
        print(
            f"payhook simulate: no [providers.{args.provider}.{args.account}] in the config",
            file=sys.stderr,
        )
        return 2
    payment = SimulatedPayment(
        order_id=args.order,
        amount=args.amount,
        currency=args.currency,
        status=args.status,
        # Chosen here rather than by the provider module so that it can be printed: it is what
        # `payhook payments show` takes, and encrypted or signed payloads hide it.
        transaction_id=args.transaction_id or str(secrets.randbelow(9 * 10**9) + 10**9),
        test=args.test,
        kind=args.kind,
        extra=extra,
    )
    if args.time_scale < 0:
        print("payhook simulate: --time-scale must be >= 0", file=sys.stderr)
        return 2
    print(
        f"# {args.provider} {args.account}: transaction {payment.transaction_id}, order "
        f"{payment.order_id}, {payment.amount} {payment.currency}, {payment.status}"
    )
    try:
        return await simulate_and_send(
            account,
            PROVIDERS[args.provider],
            payment,
            args.url or default_url(settings, args.provider, args.account),
            retries=args.retries,
            time_scale=args.time_scale,
            out=sys.stdout,
        )
    except (ValueError, ContractError, OSError, Rejected) as exc:
        print(f"payhook simulate: {exc}", file=sys.stderr)
        return 2
