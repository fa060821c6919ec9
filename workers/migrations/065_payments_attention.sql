-- Payments needing an operator, counted for payhook_ledger_attention_payments (every ledger
-- worker, every 15 s) and listed by operators: only flagged rows enter this index.
CREATE INDEX payments_attention ON payments (id) WHERE attention IS NOT NULL;
