"""The thin HTTP edge: verify a provider callback, publish it with confirms, then ack it."""
