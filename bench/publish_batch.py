"""Publishing a batch of confirmed messages: one write per message vs one per batch (127.0.0.1).

Publishes ``--count`` persistent messages (``--size`` bytes) to a fresh quorum queue in
batches of ``--batch``, all confirms of a batch in flight together, as the relay publishes an
outbox batch: once with aiormq's ``basic_publish(wait=False)`` per message (how the relay
published before), once with ``runtime.publish_many`` (one frame group per batch), alternating
``--rounds`` times. Prints messages/s, this process's CPU and RabbitMQ's CPU per message.

    PAYHOOK_AMQP_URL=… .venv/bin/python bench/publish_batch.py --count 20000 --batch 20

The queue is deleted after each round; bounded by ``--count``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import aiormq
from pamqp import commands as spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ledger_drain import cpu_seconds
from runtime.publish_many import Outgoing, publish_many


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def broker_cpu() -> float:
    return cpu_seconds(set()).get("rabbitmq", 0.0)


async def one_round(
    url: str, queue: str, way: str, count: int, batch: int, size: int
) -> dict[str, float]:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, aiormq.Channel)
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        body = os.urandom(size // 2).hex().encode()
        cpu0, broker0, t0 = own_cpu(), broker_cpu(), time.perf_counter()
        for start in range(0, count, batch):
            n = min(batch, count - start)
            if way == "each":
                await asyncio.gather(
                    *(
                        channel.basic_publish(
                            body,
                            routing_key=queue,
                            properties=spec.Basic.Properties(delivery_mode=2),
                            mandatory=True,
                            wait=False,
                        )
                        for _ in range(n)
                    )
                )
            else:
                messages = [
                    Outgoing("", queue, body, spec.Basic.Properties(delivery_mode=2))
                    for _ in range(n)
                ]
                await asyncio.gather(*await publish_many(channel, messages))
        took = time.perf_counter() - t0
        cpu, broker = own_cpu() - cpu0, broker_cpu() - broker0
        await channel.queue_delete(queue)
    finally:
        await connection.close()
    return {"rate": count / took, "cpu_us": 1e6 * cpu / count, "broker_us": 1e6 * broker / count}


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--size", type=int, default=1000, help="message body bytes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("PAYHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:25672/")
    results: dict[str, list[dict[str, float]]] = {"each": [], "many": []}
    for n in range(args.rounds):
        for way in ("each", "many") if n % 2 == 0 else ("many", "each"):
            queue = f"bench.publish-batch.{os.getpid()}.{way}.{n}"
            results[way].append(await one_round(url, queue, way, args.count, args.batch, args.size))
    print(
        f"publish_batch: {args.count} messages of {args.size} B in batches of {args.batch},"
        f" {args.rounds} rounds (min / median / max)"
    )
    for way, label in (("each", "basic_publish per message"), ("many", "publish_many per batch")):
        rs = results[way]
        print(
            f"  {label:27}: {spread([r['rate'] for r in rs])} msg/s;"
            f" publisher CPU {spread([r['cpu_us'] for r in rs])} us/msg;"
            f" RabbitMQ CPU {spread([r['broker_us'] for r in rs])} us/msg"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
