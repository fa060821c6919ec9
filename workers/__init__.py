"""Consumers behind the broker: the ledger worker, the outbox relay and the webhook worker."""
