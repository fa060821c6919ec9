-- Indexes that cost the ledger's writes and that other indexes already serve: each is one
-- more B-tree entry for every payment or journal entry written (for payments also every
-- update that is not HOT), at a random place in the tree, so on a ledger of millions it is
-- a shared-buffer miss more per callback (bench/ledger_growth.py; docs/operations.md,
-- "Ledger growth", has the figures). A DROP INDEX is only a catalog change and a file unlink,
-- but it waits for the table's lock: apply it when no long transaction holds payments.
--
-- payments_order (010: provider, account, order_id) is covered by payments_order_id (070:
-- order_id): order ids are nearly unique, so a registration's lookup by (provider, account,
-- order_id) (workers/ledger/orders.py) is a scan of a row or two on order_id plus a filter.
-- On a million payments the planner already preferred payments_order_id.
DROP INDEX IF EXISTS payments_order;
-- payments_attention (065: id, flagged rows only) holds the same rows as
-- payments_attention_recent (070: created_at, id): the attention count of every ledger worker
-- and the console's overview read them from that one, as index-only scans.
DROP INDEX IF EXISTS payments_attention;
-- journal_entries_payment (011: payment_id): an entry's id is its callback's id, so
-- `payments show` finds a payment's entries through callbacks_payment and the entries'
-- primary key (workers/ledger/queries.py); `ledger check` reads the whole table anyway.
DROP INDEX IF EXISTS journal_entries_payment;
