-- Merchant webhook delivery: endpoint state, one row per (event, merchant), one per attempt.
-- No foreign key to events: a delivery is keyed by the CloudEvent id it received from the
-- broker, and the worker must not depend on the order in which rows and messages arrive.
-- Replays read the body from events (the outbox keeps every event), joined by id.

CREATE TABLE webhook_endpoints (
    merchant        text PRIMARY KEY,
    disabled_at     timestamptz,              -- NULL: enabled
    disabled_reason text,                     -- '410 Gone', 'operator', …
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    event_id        text NOT NULL,
    merchant        text NOT NULL,
    event_type      text NOT NULL DEFAULT '',
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed', 'parked')),
    -- Bumped by every replay; a queued message from an older round is stale and dropped, so a
    -- replay restarts the schedule instead of running a second one beside the first.
    round           integer NOT NULL DEFAULT 0,
    attempts        integer NOT NULL DEFAULT 0,   -- finished attempts, every round
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, merchant)
);
CREATE INDEX webhook_deliveries_attention ON webhook_deliveries (updated_at)
    WHERE state IN ('failed', 'parked');
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (merchant)
    WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    event_id        text NOT NULL,
    merchant        text NOT NULL,
    round           integer NOT NULL,
    attempt         integer NOT NULL,             -- 1-based step of the schedule
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,                  -- NULL: in flight, or the worker died in it
    duration_ms     integer,
    status_code     integer,                      -- NULL when no response came back
    error_class     text,                         -- timeout, connection_error, circuit_open, …
    response_body   text,                         -- first 4 KiB, as text
    -- What the worker decided after the attempt, and whether that was carried out (published
    -- to a retry/dead queue). A redelivered message finds the decision and only finishes it.
    next_action     text CHECK (next_action IN ('done', 'retry', 'dead', 'park')),
    next_delay_s    double precision,
    followed_up_at  timestamptz,
    PRIMARY KEY (event_id, merchant, round, attempt),
    FOREIGN KEY (event_id, merchant) REFERENCES webhook_deliveries ON DELETE CASCADE
);
