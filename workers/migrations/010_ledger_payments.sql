-- Ledger: one row per payment or payout, and every callback about it, kept forever.
-- The ledger worker owns these tables (workers/ledger/); states and rules: docs/ledger.md.
--
-- No foreign keys between the ledger tables, on purpose: each costs a lookup per inserted
-- row, together about 25 us of Postgres CPU per callback (measured with bench/ledger_drain.py),
-- a tenth of the drain budget on 2 cores. The worker writes a callback, its payment, its
-- entry and postings in one transaction with ids derived from one another (entry id =
-- callback id, payment id = uuid5 of its key), and `payhook ledger check` verifies every
-- reference. What must never break is enforced here: uniqueness, money checks, and (011)
-- balanced, append-only postings.

CREATE TABLE payments (
    -- uuid5 of provider/account/transaction_id, computed by the worker (workers/ledger/store.py):
    -- a batch can refer to a payment it is creating without a round trip for its id.
    id             uuid PRIMARY KEY,
    provider       text NOT NULL,
    account        text NOT NULL,
    transaction_id text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('payment', 'payout')),
    state          text NOT NULL,
    merchant       text,
    order_id       text,
    currency       text CHECK (currency ~ '^[A-Z]{3}$'),
    amount         bigint,                          -- what was asked for (minor units)
    test           boolean NOT NULL,
    -- Money targets (workers/ledger/postings.py); the postings always equal them.
    paid           bigint NOT NULL DEFAULT 0 CHECK (paid >= 0),
    refund_sum     bigint NOT NULL DEFAULT 0 CHECK (refund_sum >= 0),
    full_refund    boolean NOT NULL DEFAULT false,
    refunded       bigint NOT NULL DEFAULT 0,
    fee            bigint NOT NULL DEFAULT 0 CHECK (fee >= 0),
    fee_currency   text CHECK (fee_currency ~ '^[A-Z]{3}$'),
    attention      text,                            -- latest conflict/mismatch for an operator
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, account, transaction_id),
    -- The cumulative refund never exceeds what was paid, and is exactly what the facts say.
    CHECK (refunded = CASE WHEN full_refund THEN paid ELSE least(refund_sum, paid) END),
    CHECK (
        (kind = 'payment' AND state IN ('new', 'pending', 'failed', 'expired', 'cancelled',
            'partially_paid', 'succeeded', 'refund_pending', 'refund_failed',
            'partially_refunded', 'refunded'))
        OR (kind = 'payout' AND state IN ('new', 'pending', 'failed', 'expired', 'cancelled',
            'partially_paid', 'succeeded') AND refund_sum = 0 AND NOT full_refund)
    ),
    -- Money moves only on the paid branch.
    CHECK (
        state IN ('partially_paid', 'succeeded', 'refund_pending', 'refund_failed',
                  'partially_refunded', 'refunded')
        OR (paid = 0 AND fee = 0 AND refund_sum = 0 AND NOT full_refund)
    )
)
-- Room on each page for the next version of a row: a payment is updated by its later
-- callbacks, and an update that fits its page skips the index writes (HOT).
WITH (fillfactor = 85);
CREATE INDEX payments_order ON payments (provider, account, order_id) WHERE order_id IS NOT NULL;

CREATE TABLE callbacks (
    id             uuid PRIMARY KEY,                -- CallbackReceived.id: the dedupe key
    seq            bigserial NOT NULL,              -- the order the ledger applied them in
    payment_id     uuid NOT NULL,                   -- payments.id
    status         text NOT NULL,                   -- normalized status the provider reported
    provider_status text NOT NULL,
    variant        text NOT NULL,
    outcome        text NOT NULL CHECK (outcome IN ('applied', 'late', 'stale', 'conflict',
                       'invalid', 'amount_mismatch', 'no_expectation', 'info', 'unrecognized')),
    reason         text,
    state_before   text NOT NULL,
    state_after    text NOT NULL,
    correlation_id text NOT NULL DEFAULT '',
    body           json NOT NULL,                   -- the message as received, byte for byte
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callbacks_payment ON callbacks (payment_id, seq);
