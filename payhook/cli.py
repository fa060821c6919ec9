"""``payhook``: one command, a subcommand per role and per operator task.

    payhook run                 every role in one process (development, small installs)
    payhook ingress             the HTTP edge alone
    payhook worker ledger       the ledger worker alone
    payhook worker webhooks     the webhook worker alone
    payhook relay               the outbox relay alone
    payhook admin               the admin listener (order expectations) alone
    payhook migrate             apply database migrations
    payhook simulate …          send a callback exactly as a provider would
    payhook payments|ledger|webhooks …   operator commands

Settings come from ``PAYHOOK_*`` environment variables, accounts and merchants from the TOML
file at ``PAYHOOK_CONFIG_PATH`` (or ``--config``).

Exit codes: 0 done (or stopped on request), 1 a role failed or an operator command found a
problem, 2 bad configuration or usage, 3 a server (Postgres, RabbitMQ) could not be reached by
an operator command. Long-running roles never exit for an unreachable server: they wait.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from contracts.config import Config, Settings
from contracts.errors import ConfigError
from payhook.commands import ConfigLoader, Handler
from payhook.config_files import load_config, settings_from_environment
from payhook.logging import configure_logging
from payhook.roles import ROLES, resolve
from runtime import database
from runtime.errors import Unreachable
from runtime.process import RoleContext, serve

__all__ = ["EXIT_UNREACHABLE", "main"]

log = structlog.get_logger("payhook")

EXIT_UNREACHABLE = 3


def _area_registrars() -> list[Callable[[Any], None]]:
    from ingress.simulate_command import register as simulate
    from workers.ledger.commands import register as ledger
    from workers.webhooks.commands import register as webhooks

    return [simulate, ledger, webhooks]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payhook", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every role in one process")
    run.add_argument("--no-migrate", action="store_true", help="skip applying migrations")
    run.add_argument(
        "--roles",
        type=_role_list,
        default=list(ROLES),
        metavar="ROLE,...",
        help=f"only these roles, in one process (of: {', '.join(ROLES)}; default: all)",
    )
    run.set_defaults(handler=_run_all)

    for role in ("ingress", "relay", "admin"):
        p = sub.add_parser(role, help=f"run the {role} alone")
        p.set_defaults(handler=_run_one(role))
    worker = sub.add_parser("worker", help="run one worker alone")
    worker_sub = worker.add_subparsers(dest="worker", required=True, metavar="WORKER")
    for name in ("ledger", "webhooks"):
        p = worker_sub.add_parser(name, help=f"the {name} worker")
        p.set_defaults(handler=_run_one(f"worker.{name}"))

    migrate = sub.add_parser("migrate", help="apply database migrations (safe to repeat)")
    migrate.set_defaults(handler=_migrate)

    for register in _area_registrars():
        register(sub)
    _accept_config_anywhere(parser)
    return parser


_CONFIG_HELP = "TOML file with accounts and merchants"


def _accept_config_anywhere(parser: argparse.ArgumentParser) -> None:
    """``payhook --config F run`` and ``payhook run --config F`` both work.

    argparse binds an option to the parser it was declared on, and people (and the README)
    write it after the command. SUPPRESS as the default keeps a subcommand from overwriting a
    value given before it.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                child.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
                _accept_config_anywhere(child)


async def _migrate(args: argparse.Namespace, settings: Settings, _: ConfigLoader) -> int:
    from workers.db import migrate

    applied = await migrate(settings.database_url)
    log.info("payhook.migrated", applied=applied)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


async def _migrate_when_ready(ctx: RoleContext) -> None:
    """``payhook run``'s first step: wait for Postgres (stop-aware), then migrate."""
    from workers.db import migrate_connection

    conn = await database.wait_for_database(
        ctx.settings.database_url, ctx.stop, ctx.dependency("postgres")
    )
    if conn is None:
        return
    try:
        applied = await migrate_connection(conn)
    finally:
        await conn.close()
    log.info("payhook.migrated", applied=applied)


def _role_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROLES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown role(s) {', '.join(unknown) or '(none given)'}; roles: {', '.join(ROLES)}"
        )
    return list(dict.fromkeys(names))  # each once, in the order given


async def _run_all(args: argparse.Namespace, settings: Settings, load: ConfigLoader) -> int:
    config = load()
    prepare = None if args.no_migrate else _migrate_when_ready
    return await serve(resolve(args.roles), settings, config, prepare=prepare)


def _run_one(role: str) -> Handler:
    async def handler(args: argparse.Namespace, settings: Settings, load: ConfigLoader) -> int:
        return await serve(resolve([role]), settings, load())

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_environment()
        if args.config:
            settings = _with_config_path(settings, args.config)
    except ConfigError as exc:
        print(f"payhook: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    def load() -> Config:
        return load_config(settings.config_path)

    try:
        return int(_run(args.handler(args, settings, load)))
    except ConfigError as exc:
        print(f"payhook: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Unreachable as exc:
        # Operator commands only: long-running roles wait for their servers instead.
        print(f"payhook: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _with_config_path(settings: Settings, path: str) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, config_path=path)


def _run(coro: Awaitable[int]) -> int:
    """Run on uvloop where it is installed."""
    # Everything imported so far lives as long as the process: keep it out of the collector's
    # scans (gc.freeze). A request allocates hundreds of short-lived containers; with the
    # default first-generation threshold (700) many are still referenced when a collection
    # runs and get promoted, so the older generations fill and are scanned often.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    try:
        import uvloop
    except ImportError:  # optional: about 40 % more requests per core for the ingress
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
