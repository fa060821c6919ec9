-- Every event payhook emits, kept forever, and the outbox the relay drains.
-- The ledger worker inserts a row in the same transaction as the ledger change it reports
-- (ON CONFLICT (id) DO NOTHING: ids are deterministic, so a replay cannot add a second one);
-- the relay publishes rows whose published_at is NULL and then sets it.
CREATE TABLE events (
    id            text PRIMARY KEY,            -- CloudEvents id (deterministic)
    seq           bigserial UNIQUE NOT NULL,   -- publication order
    type          text NOT NULL,               -- payhook.payment.succeeded …
    source        text NOT NULL,               -- /payhook/<provider>/<account>
    subject       text NOT NULL,               -- provider transaction id
    routing_key   text NOT NULL,               -- <kind>.<status>.<provider>
    provider      text NOT NULL,
    account       text NOT NULL,
    merchant      text,
    correlation_id text NOT NULL DEFAULT '',
    body          jsonb NOT NULL,              -- the whole CloudEvent
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX events_unpublished ON events (seq) WHERE published_at IS NULL;
CREATE INDEX events_subject ON events (provider, account, subject);
