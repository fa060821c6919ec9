-- What a merchant's checkout expects to be paid for an order (workers/ledger/expectations.py).
CREATE TABLE order_expectations (
    provider    text NOT NULL,
    account     text NOT NULL,
    order_id    text NOT NULL,
    merchant    text NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    test        boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, account, order_id)
);
