"""Bulk replays started from the console, run in the background of the admin process.

The operator confirms a filter; the job takes the deliveries matching it at that moment (so
one delivery is replayed once, whatever it becomes meanwhile), writes a ``console_jobs`` row
and replays them batch by batch (``workers.webhooks.replay``), writing its progress after each
batch. Progress lives in Postgres, so any admin process behind a load balancer can show it. A
job whose process stopped shows as stalled: what it had replayed is replayed, and the filter
shows what is left.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import structlog

from contracts.config import Settings
from workers.console.refs import PoolRef
from workers.webhooks.filters import DeliveryFilter, delivery_targets
from workers.webhooks.replay import replay_deliveries

__all__ = ["STALLED_AFTER_S", "Jobs", "job_status"]

log = structlog.get_logger(__name__)

STALLED_AFTER_S = 120


class Jobs:
    def __init__(self, pool_ref: PoolRef, settings: Settings) -> None:
        self._pool_ref = pool_ref
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def _pool(self) -> asyncpg.Pool[Any]:
        pool = self._pool_ref.pool
        if pool is None:
            raise ConnectionRefusedError("not connected to Postgres yet")
        return pool

    async def start_replay(self, flt: DeliveryFilter, requested_by: str) -> tuple[str, int]:
        """Snapshot what ``flt`` matches, record the job, start it; (job id, deliveries)."""
        job_id = str(uuid.uuid4())
        async with self._pool().acquire() as conn:
            pairs = await delivery_targets(conn, flt)
            await conn.execute(
                "INSERT INTO console_jobs (id, kind, description, requested_by, total)"
                " VALUES ($1::uuid, 'webhooks.replay', $2, $3, $4)",
                job_id,
                flt.describe(),
                requested_by,
                len(pairs),
            )
        task = asyncio.create_task(self._run(job_id, pairs), name=f"console-job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("console.replay_started", job_id=job_id, deliveries=len(pairs))
        return job_id, len(pairs)

    async def _run(self, job_id: str, pairs: list[tuple[str, str]]) -> None:
        error: str | None = None
        try:
            async with self._pool().acquire() as conn:

                async def progress(n: int) -> None:
                    await conn.execute(
                        "UPDATE console_jobs SET done = done + $2, updated_at = now()"
                        " WHERE id = $1::uuid",
                        job_id,
                        n,
                    )

                result = await replay_deliveries(conn, self._settings, pairs, progress)
            if result.missing:
                error = f"{len(result.missing)} event(s) not in the events table"
        except asyncio.CancelledError:
            error = "interrupted: the admin listener stopped"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("console.replay_failed", job_id=job_id)
        finally:
            await self._finish(job_id, error)

    async def _finish(self, job_id: str, error: str | None) -> None:
        try:
            async with asyncio.timeout(5), self._pool().acquire() as conn:
                await conn.execute(
                    "UPDATE console_jobs SET finished_at = now(), updated_at = now(), error = $2"
                    " WHERE id = $1::uuid",
                    job_id,
                    error,
                )
        except Exception:
            log.warning("console.job_not_recorded", job_id=job_id, error=error)
        log.info("console.replay_finished", job_id=job_id, error=error)

    async def wait(self, timeout_s: float) -> None:
        """Let running jobs finish for up to ``timeout_s``, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


async def job_status(conn: Any, job_id: str) -> dict[str, Any] | None:
    try:
        uuid.UUID(job_id)
    except ValueError:
        return None
    row = await conn.fetchrow(
        "SELECT id, kind, description, requested_by, total, done, error, created_at, updated_at,"
        " finished_at, (finished_at IS NULL AND updated_at < now() - make_interval(secs => $2))"
        " AS stalled FROM console_jobs WHERE id = $1::uuid",
        job_id,
        STALLED_AFTER_S,
    )
    return None if row is None else {**dict(row), "id": str(row["id"])}
