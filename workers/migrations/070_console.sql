-- The operator console and `payhook payments list` / `payhook webhooks failed|replay`: an
-- index behind every search filter, so a page stays fast on millions of payments
-- (bench/console_search.py measures them), and the record of bulk actions started from the
-- console (progress, for whichever admin process the operator's browser reaches).
--
-- Searches list newest first and page by keyset (created_at, id), never OFFSET, so every
-- payments index ends in (created_at, id): a page is one index range scan. No index on
-- provider: five providers, each a large share, are found fast along payments_recent (and an
-- index costs every new payment: bench/console_search.py measures that too).
-- created_at never changes after the insert, so these keys keep updates of a payment HOT
-- unless the indexed column itself changes. `state` does change: its index makes a state
-- change write index entries (docs/operations.md, Console, gives the measured cost).
CREATE INDEX payments_recent ON payments (created_at, id);
CREATE INDEX payments_merchant_recent ON payments (merchant, created_at, id)
    WHERE merchant IS NOT NULL;
CREATE INDEX payments_state_recent ON payments (state, created_at, id);
CREATE INDEX payments_transaction ON payments (transaction_id);
CREATE INDEX payments_order_id ON payments (order_id) WHERE order_id IS NOT NULL;
-- Payments waiting for an operator: few, so a small partial index (attention changes rarely).
CREATE INDEX payments_attention_recent ON payments (created_at, id)
    WHERE attention IS NOT NULL;

-- Callbacks per second on the console's overview (a window of the newest recorded rows, read
-- from the index alone). Callbacks are insert-only and recorded_at only grows: appends to the
-- rightmost leaf.
CREATE INDEX callbacks_recorded ON callbacks (recorded_at) INCLUDE (payment_id);

-- Deliveries in trouble (failing: pending after a failed attempt; failed; parked), newest
-- change first, with or without a merchant. Partial: delivered ones never enter them.
CREATE INDEX webhook_deliveries_trouble ON webhook_deliveries (updated_at, event_id, merchant)
    WHERE state IN ('failed', 'parked') OR (state = 'pending' AND attempts > 0);
-- state included: the overview counts them per merchant and state from this index alone.
CREATE INDEX webhook_deliveries_trouble_merchant
    ON webhook_deliveries (merchant, updated_at, event_id) INCLUDE (state)
    WHERE state IN ('failed', 'parked') OR (state = 'pending' AND attempts > 0);

-- Bulk actions started from the console (a replay of every delivery matching a filter):
-- the process running it writes its progress here, any admin process shows it.
CREATE TABLE console_jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL,               -- 'webhooks.replay'
    description  text NOT NULL,               -- the filter, as the operator confirmed it
    requested_by text NOT NULL DEFAULT '',    -- client address
    total        integer NOT NULL,
    done         integer NOT NULL DEFAULT 0,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
