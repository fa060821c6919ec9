"""The ingress's Prometheus metrics (see ``runtime/metrics.py`` for the conventions).

    payhook_ingress_callbacks_total{provider,account,outcome,reason}
        outcome: accepted | rejected (reason: the refusal's reason text, a fixed phrase per
        check) | publish_failed | unencodable | error. An unknown provider or account in the
        URL counts under provider="unknown", account="unknown", so URLs cannot grow labels.
    payhook_ingress_ack_seconds{provider}      request start → provider's ack (accepted only)
    payhook_ingress_publish_batch_size          callbacks per confirmed message
    payhook_ingress_confirms_in_flight          messages published, confirm not yet back

Children are cached per label set: ``labels()`` takes a lock and builds a key on every call,
which the hot path does not need to pay twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACK_SECONDS",
    "BATCH_SIZE",
    "CALLBACKS",
    "CONFIRMS_IN_FLIGHT",
    "IngressMetrics",
]

CALLBACKS = Counter(
    "payhook_ingress_callbacks",
    "Callbacks received, by provider, account and outcome.",
    ["provider", "account", "outcome", "reason"],
)
ACK_SECONDS = Histogram(
    "payhook_ingress_ack_seconds",
    "Time from receiving a callback to answering the provider's acknowledgement.",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "payhook_ingress_publish_batch_size",
    "Callbacks carried by one confirmed message.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
CONFIRMS_IN_FLIGHT = Gauge(
    "payhook_ingress_confirms_in_flight", "Messages published whose confirm has not come back."
)

UNKNOWN = "unknown"


class IngressMetrics:
    """Per-request counting with cached children."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def start_at_zero(self, accounts: Iterable[tuple[str, str]]) -> None:
        """Create each account's rare outcomes at 0, so rate() sees their first occurrence."""
        for provider, account in accounts:
            for outcome in ("accepted", "publish_failed", "unencodable"):
                self._counters[(provider, account, outcome, "")] = CALLBACKS.labels(
                    provider, account, outcome, ""
                )

    def count(self, provider: str, account: str, outcome: str, reason: str = "") -> None:
        key = (provider, account, outcome, reason)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = CALLBACKS.labels(*key)
        child.inc()

    def accepted(self, provider: str, account: str, seconds: float) -> None:
        self.count(provider, account, "accepted")
        child = self._latency.get(provider)
        if child is None:
            child = self._latency[provider] = ACK_SECONDS.labels(provider)
        child.observe(seconds)
