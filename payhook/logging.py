"""structlog set-up: JSON lines through orjson for machines, or a console renderer for people.

``merge_contextvars`` comes first so ids bound per unit of work (correlation id, callback id,
delivery tag) reach every line. ``redact`` is a last line of defence: a field whose name says
secret or payer data is masked even if a call site forgets, and so is the password of any URL
in any string (``contracts.redact``), tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from contracts.redact import SENSITIVE_KEYS, mask_urls

__all__ = ["configure_logging", "redact"]

# The key list lives in contracts (the operator console masks the same fields).
_SENSITIVE = SENSITIVE_KEYS


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask fields whose name says secret or payer data, and passwords in any URL."""
    for key in event_dict.keys() & _SENSITIVE:
        event_dict[key] = "[redacted]"
    for key, value in event_dict.items():
        if isinstance(value, str):
            if "://" in value:
                event_dict[key] = mask_urls(value)
        elif isinstance(value, list | dict | tuple):
            event_dict[key] = _mask_nested(value)
    return event_dict


def _mask_nested(value: Any) -> Any:
    """Rendered tracebacks are lists of dicts: an exception's message can carry a URL."""
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {k: _mask_nested(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_nested(v) for v in value]
    return value


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """One logging set-up for every payhook process, stdlib loggers (libraries) included.

    Tracebacks are rendered without frame locals (a local can hold a DSN, a config, a secret),
    and redaction runs on every line after the traceback is rendered.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int) or fmt not in ("json", "console"):
        raise ValueError(f"log level {level!r} / format {fmt!r}")
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    pre: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    if fmt == "console":
        render: list[Any] = [
            redact,
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        render = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redact,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[*pre, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, asyncpg, aiohttp) log through the stdlib: the same chain renders
    # them (as text lines, also redacted), and only their warnings and worse are kept.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *pre],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *(render[:-1]),
                structlog.processors.JSONRenderer()
                if fmt == "json"
                else structlog.dev.ConsoleRenderer(
                    exception_formatter=structlog.dev.plain_traceback
                ),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    # aiormq logs every refused connection attempt as an error; the runtime already logs one
    # line per attempt with the server and the reason (runtime.dependency_unavailable).
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
