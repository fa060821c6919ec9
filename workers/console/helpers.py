"""Request helpers shared by the console's page modules (``views``, ``actions``)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from workers.console.app import BASE, FORM, STATE, ConsoleState
from workers.ledger.search import InvalidFilter
from workers.when import parse_since

__all__ = [
    "back_to",
    "console_state",
    "pool_of",
    "redirect",
    "text_param",
    "time_param",
    "with_notice",
]


def console_state(request: web.Request) -> ConsoleState:
    return request.app[STATE]


def pool_of(request: web.Request) -> asyncpg.Pool[Any]:
    pool = console_state(request).pool_ref.pool
    if pool is None:
        raise ConnectionRefusedError("not connected to Postgres yet")
    return pool


def time_param(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_since(text)
    except argparse.ArgumentTypeError as exc:
        raise InvalidFilter(f"{name}: {exc}") from None


def text_param(request: web.Request, name: str) -> str | None:
    return request.query.get(name, "").strip() or None


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def back_to(request: web.Request, default: str) -> str:
    target = str(request[FORM].get("back") or "")
    return target if target.startswith(BASE + "/") and not target.startswith("//") else default


def with_notice(location: str, code: str, n: int | None = None) -> str:
    sep = "&" if "?" in location else "?"
    extra = f"&n={n}" if n is not None else ""
    return f"{location}{sep}notice={code}{extra}"
