"""How long this disk takes to make a write durable: the floor under every p99 that waits
for one (bounded; writes one 4 KiB block, in a file it removes afterwards).

Every acknowledgement payhook gives waits for an fsync somewhere: the provider's ack for
RabbitMQ's quorum-queue WAL, the ledger's commit for Postgres's WAL, the event for the WAL
again. When an fsync stalls, everything queued behind it waits with it, whatever the CPU
does. This measures the distribution of ``fdatasync`` on the file system of ``--dir``
(default: the private servers' data, ``.local``) at a fixed pace, like a WAL writer that
syncs ``--rate`` times a second, and prints p50/p99/p99.9/max and how many took longer than
50 and 100 ms. Run it beside ``bench/e2e.py`` to see the disk under load.

    .venv/bin/python bench/fsync_latency.py --seconds 30 [--rate 100] [--dir .local]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(directory: Path, seconds: float, rate: float) -> list[float]:
    """``fdatasync`` latencies in seconds, one 4 KiB write before each, ``rate`` per second."""
    fd, name = tempfile.mkstemp(prefix="fsync-probe-", dir=directory)
    block = b"\0" * 4096
    latencies: list[float] = []
    try:
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
            os.pwrite(fd, block, (n % 256) * len(block))
            began = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - began)
            n += 1
    finally:
        os.close(fd)
        os.unlink(name)
    return latencies


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="fsyncs per second")
    parser.add_argument("--dir", default=str(REPO / ".local"), help="a directory on the disk")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 < args.rate <= 10_000:
        raise SystemExit("--seconds 0..600 and --rate 0..10000: keep it bounded")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = sorted(measure(directory, args.seconds, args.rate))
    ms = [x * 1000 for x in ordered]
    print(
        f"fdatasync on {directory}: {len(ms)} in {args.seconds:g} s; "
        f"p50 {quantile(ms, 0.5):.2f} ms, p99 {quantile(ms, 0.99):.2f} ms, "
        f"p99.9 {quantile(ms, 0.999):.1f} ms, max {ms[-1]:.1f} ms; "
        f"over 50 ms: {sum(1 for x in ms if x > 50)}, over 100 ms: {sum(1 for x in ms if x > 100)}"
    )


if __name__ == "__main__":
    main()
