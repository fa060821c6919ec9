"""Outcome exceptions a message handler raises, and which driver errors mean "a server is away".

    Exception
    ├── RetryLater(delay_s)       this message, again later (requeued; counts as a delivery)
    └── PermanentFailure(reason)  this message can never succeed: dead-letter it

A dependency outage (Postgres or RabbitMQ unreachable, restarting, closing our connection or
channel for any reason) is neither: it is nobody's fault, the work waits for the server and
is not counted against the message (``is_outage``).
"""

from __future__ import annotations

import socket

import aiormq
import asyncpg

__all__ = [
    "PermanentFailure",
    "RetryLater",
    "describe",
    "is_broker_outage",
    "is_database_outage",
    "is_outage",
]


class RetryLater(Exception):
    """Try this message again after ``delay_s`` (it goes back to the queue)."""

    def __init__(self, reason: str, delay_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class PermanentFailure(Exception):
    """This message can never be handled (malformed, refers to nothing): dead-letter it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreachable(Exception):
    """An operator command could not reach a server: ``cannot reach Postgres at h:p: why``."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"cannot reach {server}: {reason}")
        self.server = server
        self.reason = reason


_DATABASE_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # Seen while Postgres shuts down fast: the protocol is cut mid-message.
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)

_BROKER_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    # Every connection or channel the broker closed, whatever its reason (541 INTERNAL_ERROR
    # from a node that just started, a node going away, a precondition): reconnect, redeclare.
    aiormq.exceptions.AMQPError,
    # Publishing or settling on a channel that closed meanwhile (a RuntimeError subclass).
    aiormq.exceptions.ChannelInvalidStateError,
)


def is_database_outage(exc: BaseException) -> bool:
    return isinstance(exc, _DATABASE_OUTAGES)


def is_broker_outage(exc: BaseException) -> bool:
    return isinstance(exc, _BROKER_OUTAGES)


def is_outage(exc: BaseException) -> bool:
    """Postgres or RabbitMQ went away: wait for it, nobody's fault."""
    return isinstance(exc, _DATABASE_OUTAGES + _BROKER_OUTAGES)


def describe(exc: BaseException) -> str:
    """One short line for a log field: why a server could not be reached or used."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:300] if text else name
