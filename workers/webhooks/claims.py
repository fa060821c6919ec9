"""Claiming an attempt across worker processes before the merchant is called.

Once the overdue sweeper (``sweeper.py``) exists, one attempt can be carried by two messages
at the same moment: the sweeper's copy and the late one from the delay queue, possibly taken
by two worker processes. The per-process lock (``consumer._KeyedLocks``) and the attempt
record (written after the call) cannot stop both from calling the merchant, so a message that
may have a twin first inserts the attempt's row unfinished (``finished_at`` NULL, as a crash
mid-request already leaves it in the schema's terms); the primary key lets only one in.

Which messages may have a twin: exactly those the sweeper can publish, attempts after the
first of a round and replays (``round > 0``). A first attempt in round 0 comes from the
events exchange, has no delivery row before it is recorded and is never swept, so it skips
the claim: the common path costs no extra statement.

The claim is a lease: a holder that died mid-request (kill -9, cancelled at shutdown) leaves
its row unfinished, and after ``lease_s`` another copy may take it over and make the attempt
again, as a redelivery did before claims existed.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from workers.webhooks.store import AttemptKey

__all__ = ["CLAIM_MARGIN_S", "AttemptInFlight", "claim_attempt", "may_have_twin"]

# Added to the merchant's request timeout: the holder records its attempt within the request
# plus the record statement; a lease shorter than that could let a live attempt be doubled.
CLAIM_MARGIN_S = 30.0


class AttemptInFlight(Exception):
    """Another message holds this attempt's claim: this copy must not call the merchant."""


def may_have_twin(key: AttemptKey) -> bool:
    """Whether the sweeper may have published a second message for this attempt."""
    return key.round > 0 or key.attempt > 1


_CLAIM = """
WITH delivery AS (
    SELECT event_id, merchant FROM webhook_deliveries WHERE event_id = $1 AND merchant = $2
), claimed AS (
    INSERT INTO webhook_attempts AS a (event_id, merchant, round, attempt, started_at)
    SELECT event_id, merchant, $3, $4, now() FROM delivery
    ON CONFLICT (event_id, merchant, round, attempt) DO UPDATE SET started_at = now()
        WHERE a.finished_at IS NULL AND a.started_at < now() - make_interval(secs => $5)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM delivery) AS has_delivery, EXISTS (SELECT 1 FROM claimed) AS won
"""


async def claim_attempt(pool: asyncpg.Pool[Any], key: AttemptKey, lease_s: float) -> bool:
    """Take the attempt for this process; False if another message holds or finished it.

    Without a delivery row there is nothing to sweep and so no twin: the attempt goes ahead
    unclaimed (the attempts table's foreign key needs the row).
    """
    row = await pool.fetchrow(
        _CLAIM, key.event_id, key.merchant, key.round, key.attempt, float(lease_s)
    )
    assert row is not None
    return bool(row["won"]) or not row["has_delivery"]
