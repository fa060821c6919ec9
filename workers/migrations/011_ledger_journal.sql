-- Double-entry journal in integer minor units. One entry per callback that moved money; its
-- id is that callback's id, so a callback can never be posted twice.
-- Sign convention: debit > 0, credit < 0.

CREATE TABLE journal_entries (
    id          uuid PRIMARY KEY,                -- callbacks.id
    payment_id  uuid NOT NULL,                   -- payments.id
    memo        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_entries_payment ON journal_entries (payment_id);

CREATE TABLE postings (
    entry_id  uuid NOT NULL,                     -- journal_entries.id
    leg       smallint NOT NULL,
    account   text NOT NULL,
    currency  text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount    bigint NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, leg)
);

-- Every entry sums to zero per currency, enforced here and not only by the worker's code.
-- Postings are append-only (below), so an entry balances for ever iff every INSERT statement
-- balances the rows it adds, per (entry, currency). Checking the statement's transition table
-- costs one aggregate per statement, where a deferred per-row constraint trigger would run a
-- query per posting at commit; the price is that an entry's legs must be inserted by one
-- statement, which is how the worker writes them anyway.
CREATE FUNCTION ledger_postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT entry_id, currency, sum(amount) AS total INTO bad
    FROM new_postings GROUP BY entry_id, currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance in %: off by %',
            bad.entry_id, bad.currency, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_balanced();

-- A correction is a new entry, never an edit: the history of money is immutable.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
