-- Held callbacks (no_expectation, amount_mismatch) by the order id they carry themselves.
-- A registration releases what was held under its order (workers/ledger/orders.py). A
-- callback is held under its own order id, which its payment's row may lack: the payment
-- learns its order id only from a callback that gets past the expectation check. Partial, so
-- the hot path (callbacks that are applied) never touches it.
CREATE INDEX callbacks_held_order ON callbacks ((body ->> 'order_id'))
    WHERE outcome IN ('no_expectation', 'amount_mismatch');
