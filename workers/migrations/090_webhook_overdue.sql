-- The overdue sweeper (workers/webhooks/sweeper.py) asks every few seconds for pending
-- deliveries whose next attempt is past due: `state = 'pending' AND next_attempt_at < …`,
-- oldest first. 050's partial index on (merchant) WHERE state = 'pending' cannot order or
-- bound that by time, so without this each sweep would read every pending row. Partial:
-- delivered, failed and parked rows (the vast majority over time) are not in it.
CREATE INDEX webhook_deliveries_overdue ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
