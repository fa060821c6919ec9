"""A downstream consumer of payhook's events: copy it and replace ``apply`` with your effect.

It keeps its own table of payments, ``downstream_payments``, and applies every event to it
exactly once although payhook delivers at least once (contracts/asyncapi.yaml):

- Its own durable quorum queue, bound to ``<namespace>.events`` with the routing keys it asks
  for, and a dead-letter queue ``<queue>.dead`` for events it cannot handle (not JSON, a type
  it has no schema for, failing the type's JSON Schema from contracts/schemas/).
- Dedupe by event id: ``INSERT ... ON CONFLICT DO NOTHING`` into ``processed_events`` in the
  same transaction as the effect, and the ack only after that commit. A crash at any point
  means a redelivery, which then changes nothing.
- Postgres unreachable: the event is kept and tried again. Any other failure (a bug, data it
  did not foresee) hands the event back; after ``DELIVERY_LIMIT`` deliveries it is dead-lettered.
- SIGTERM or SIGINT: no new deliveries, those in flight finish, then it closes.

    pip install aio-pika asyncpg jsonschema structlog
    python examples/consumer.py --amqp-url amqp://guest:guest@127.0.0.1:25672/ \\
        --database-url postgresql://postgres@127.0.0.1:25432/mine \\
        --namespace payhook --queue my-service.payments --routing-key 'payment.#'
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

log = structlog.get_logger("consumer")

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "contracts" / "schemas"
PREFETCH = 32  # events in flight at once
DELIVERY_LIMIT = 10  # deliveries of one message before the broker dead-letters it
RETRY_DELAY_S = 1.0
# Postgres is away or restarting: not the event's fault, so keep it and try again.
DATABASE_AWAY = (OSError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)

TABLES = """
CREATE TABLE IF NOT EXISTS processed_events (
    event_id uuid PRIMARY KEY, type text NOT NULL, processed_at timestamptz DEFAULT now()
);
CREATE TABLE IF NOT EXISTS downstream_payments (
    provider text, account text, transaction_id text,
    PRIMARY KEY (provider, account, transaction_id),
    status text NOT NULL,
    amount bigint,  -- integer minor units, as in the event
    currency text,
    status_time timestamptz NOT NULL,
    events_applied integer NOT NULL DEFAULT 1
);
"""
# Events of one payment may arrive out of order: the status follows the newest event.
UPSERT_PAYMENT = """
INSERT INTO downstream_payments AS p
    (provider, account, transaction_id, status, amount, currency, status_time)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (provider, account, transaction_id) DO UPDATE SET
    status = CASE WHEN EXCLUDED.status_time >= p.status_time THEN EXCLUDED.status ELSE p.status END,
    status_time = greatest(EXCLUDED.status_time, p.status_time),
    events_applied = p.events_applied + 1
"""


@dataclass(frozen=True)
class Options:
    amqp_url: str
    database_url: str
    queue: str
    namespace: str = "payhook"
    routing_keys: tuple[str, ...] = ("payment.#",)
    schemas_dir: Path = SCHEMAS_DIR
    grace_s: float = 10.0  # how long events in flight may take to finish on SIGTERM


class Unprocessable(Exception):
    """An event this consumer can never handle: it goes to the dead-letter queue."""


def load_validators(folder: Path) -> dict[str, Draft202012Validator]:
    """One validator per event type, from payhook's ``<type>.schema.json`` files."""
    validators = {}
    for path in sorted(folder.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        validators[schema["properties"]["type"]["const"]] = Draft202012Validator(
            schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
    if not validators:
        raise SystemExit(f"no *.schema.json in {folder}")
    return validators


def parse(body: bytes, validators: dict[str, Draft202012Validator]) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise Unprocessable(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise Unprocessable("not a JSON object")
    type_ = event.get("type")
    validator = validators.get(type_) if isinstance(type_, str) else None
    if validator is None:
        raise Unprocessable(f"no schema for event type {type_!r}")
    error = best_match(validator.iter_errors(event))
    if error is not None:
        raise Unprocessable(f"{error.json_path}: {error.message}")
    return event


async def apply(conn: asyncpg.pool.PoolConnectionProxy[Any], event: dict[str, Any]) -> bool:
    """Apply ``event`` once, inside the caller's transaction; False for a duplicate."""
    inserted = await conn.fetchval(
        "INSERT INTO processed_events (event_id, type) VALUES ($1, $2)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING true",
        event["id"],
        event["type"],
    )
    if not inserted:
        return False
    data = event["data"]
    # The payment's state after this event, as payhook's ledger concluded it.
    status = data.get("ledger", {}).get("payment_status", data["status"])
    key = (data["provider"], data["account"], data["transaction_id"])
    money = (data["amount"], data["currency"])
    await conn.execute(UPSERT_PAYMENT, *key, status, *money, datetime.fromisoformat(event["time"]))
    return True


async def handle(
    message: AbstractIncomingMessage,
    pool: asyncpg.Pool[Any],
    validators: dict[str, Draft202012Validator],
) -> None:
    bound = log.bind(event_id=message.message_id, routing_key=message.routing_key)
    try:
        event = parse(message.body, validators)
    except Unprocessable as exc:
        bound.warning("event.dead_lettered", reason=str(exc))
        await message.reject(requeue=False)  # to <queue>.dead, through the queue's DLX
        return
    for attempt in itertools.count(1):
        try:
            async with pool.acquire() as conn, conn.transaction():
                applied = await apply(conn, event)
            break
        except DATABASE_AWAY as exc:
            bound.warning("event.retrying", attempt=attempt, error=repr(exc))
            await asyncio.sleep(min(attempt, 30) * RETRY_DELAY_S)
        except Exception:
            bound.exception("event.failed", redelivered=message.redelivered)
            await asyncio.sleep(RETRY_DELAY_S)
            await message.nack(requeue=True)  # counts towards DELIVERY_LIMIT
            return
    await message.ack()  # only now: the effect and the dedupe row are committed
    bound.info("event.applied" if applied else "event.duplicate", type=event["type"])


async def declare(channel: AbstractChannel, options: Options) -> AbstractQueue:
    # The exchange as payhook declares it, so that either side may start first.
    exchange = await channel.declare_exchange(
        f"{options.namespace}.events", aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = f"{options.queue}.dead"
    await channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "quorum"})
    # Rejected and worn-out messages go through the default exchange to <queue>.dead, and
    # stay here until that queue has them (at-least-once, which needs reject-publish).
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    queue = await channel.declare_queue(options.queue, durable=True, arguments=arguments)
    for key in options.routing_keys:
        await queue.bind(exchange, routing_key=key)
    return queue


async def run(options: Options, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set, then let the events in flight finish, and close."""
    validators = load_validators(options.schemas_dir)
    pool = await asyncpg.create_pool(options.database_url, min_size=1, max_size=4)
    in_flight: set[asyncio.Task[Any]] = set()

    async def on_message(message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        in_flight.add(task)
        try:
            await handle(message, pool, validators)
        except Exception as exc:  # the ack did not reach the broker, which will redeliver
            log.warning("event.unsettled", event_id=message.message_id, error=repr(exc))
        finally:
            in_flight.discard(task)

    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('downstream tables'))")
            await conn.execute(TABLES)  # a real service would use its migrations
        connection = await aio_pika.connect_robust(
            options.amqp_url, client_properties={"connection_name": options.queue}
        )
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await declare(channel, options)
            tag = await queue.consume(on_message)
            log.info("consumer.started", queue=options.queue, routing_keys=options.routing_keys)
            await stop.wait()
            log.info("consumer.stopping", in_flight=len(in_flight))
            await queue.cancel(tag)
            try:
                async with asyncio.timeout(options.grace_s):
                    while in_flight:
                        await asyncio.wait(set(in_flight))
            except TimeoutError:  # give up on them: they roll back and are redelivered
                log.warning("consumer.grace_expired", unfinished=len(in_flight))
                for task in in_flight:
                    task.cancel()
        finally:
            await connection.close()  # what is still unacked goes back to the queue
    finally:
        await pool.close()
    log.info("consumer.stopped")


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="Consume payhook's payment events.")
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--queue", required=True, help="this service's queue: shop.payments")
    parser.add_argument("--namespace", default="payhook", help="<namespace>.events is bound")
    parser.add_argument("--routing-key", action="append", dest="routing_keys", default=[])
    parser.add_argument("--schemas-dir", type=Path, default=SCHEMAS_DIR)
    parser.add_argument("--grace", type=float, default=10.0, dest="grace_s")
    args = parser.parse_args(argv)
    args.routing_keys = tuple(args.routing_keys) or ("payment.#",)
    return Options(**vars(args))


async def serve(options: Options) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await run(options, stop)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)  # aio-pika's and asyncpg's own messages
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    )
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
