"""RSS over a run: samples every few seconds, and the growth from a warm-up point to the end.

Used by ``bench/e2e.py --rss-every S``. A role's RSS rises at first whatever it does (pools
fill, prefetch buffers and caches warm, the allocator takes its arenas), so growth is measured
from the first sample after the warm-up (a tenth of the run, at most 60 s) to the last; the
start-to-end figure is printed beside it. A leak shows as growth that keeps going after the
warm-up, in proportion to the run's length.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["RssSeries", "sample_rss"]


@dataclass
class RssSeries:
    """``samples``: (seconds since the start, {process: MiB}) in order."""

    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def warm_index(self, run_seconds: float) -> int:
        warm_up = min(60.0, run_seconds / 10)
        for i, (at, _) in enumerate(self.samples):
            if at >= warm_up:
                return i
        return 0

    def report(self, run_seconds: float, names: Sequence[str]) -> list[str]:
        if len(self.samples) < 2:
            return ["    RSS series: fewer than 2 samples"]
        warm = self.warm_index(run_seconds)
        (_, start), (t_warm, at_warm), (t_end, end) = (
            self.samples[0],
            self.samples[warm],
            self.samples[-1],
        )
        lines = [
            f"    RSS MiB over the run ({len(self.samples)} samples; warm-up point"
            f" t+{t_warm:.0f} s, end t+{t_end:.0f} s): start / warm / max / end,"
            " growth warm->end (start->end)"
        ]
        for name in names:
            series = [s.get(name, 0.0) for _, s in self.samples]
            if not any(series):
                continue
            w, e, s0 = at_warm.get(name, 0.0), end.get(name, 0.0), start.get(name, 0.0)
            growth = (e / w - 1) * 100 if w else 0.0
            total = (e / s0 - 1) * 100 if s0 else 0.0
            # The servers' RSS counts the shared buffers they touch: shown, not judged.
            judged = name not in ("postgres", "rabbitmq")
            flag = "  <-- grows >= 10 %" if judged and growth >= 10 else ""
            lines.append(
                f"      {name:<18} {s0:6.0f} / {w:6.0f} / {max(series):6.0f} / {e:6.0f}"
                f"   {growth:+5.1f} % ({total:+5.1f} %){flag}"
            )
        return lines


async def sample_rss(
    every: float,
    done: asyncio.Event,
    measure: Callable[[], Awaitable[Mapping[str, float]]],
    series: RssSeries,
) -> None:
    """Append ``measure()`` to ``series`` every ``every`` s until ``done``, and once more."""
    started = time.time()
    while True:
        series.samples.append((time.time() - started, dict(await measure())))
        if done.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every)
