"""structlog set-up: JSON lines through orjson for machines, or a console renderer for people.

``merge_contextvars`` comes first so ids bound per unit of work (correlation id, callback id,
delivery tag) reach every line. ``redact`` is a last line of defence: a field whose name says
secret or payer data is masked even if a call site forgets.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

__all__ = ["configure_logging", "redact"]

_SENSITIVE = frozenset(
    {
        "password",
        "secret",
        "secrets",
        "token",
        "key",
        "api_key",
        "authorization",
        "ss1",
        "ss2",
        "ss3",
        "sign",
        "signature",
        "data",
        "body",
        "raw",
        "query",
        "email",
        "p_email",
        "name",
        "surname",
        "surename",
        "phone",
        "from",
        "sender",
    }
)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event_dict.keys() & _SENSITIVE:
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if fmt == "console":
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors = [
            *shared,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, asyncpg, aiohttp) log through the stdlib: keep their warnings.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
