"""The metric names a PromQL expression reads, and the names it may read.

``metric_names`` is a small lexer, not a parser: it drops string literals, Grafana variables,
label matchers (``{…}``), ranges and subqueries (``[…]``), grouping clauses (``by (…)``,
``on (…)`` …) and numbers or durations, then keeps every identifier that is not a keyword and
not called like a function or aggregation. That is exactly the set of metric names, for the
expressions payhook writes; ``promtool check rules`` checks their syntax.

``known_names`` is what they may read: payhook's own metrics, as registered in
prometheus_client's default registry by ``ingress.metrics`` and ``workers.metrics`` (so
renaming a metric there breaks the alerts' and the dashboard's tests), RabbitMQ's below, and
``up``.
"""

from __future__ import annotations

import re

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

__all__ = [
    "RABBITMQ_METRICS",
    "known_names",
    "metric_names",
    "payhook_metric_families",
    "payhook_metric_names",
]

# From RabbitMQ's rabbitmq_prometheus plugin, the same in 3.10-3.13 (and 4.x):
# deps/rabbitmq_prometheus/src/collectors/prometheus_rabbitmq_core_metrics_collector.erl in
# rabbitmq/rabbitmq-server, metric groups queue_coarse_metrics (queue_messages_ready,
# queue_messages_unacked, queue_messages) and queue_consumer_count (queue_consumers). The
# collector prefixes them with rabbitmq_ on /metrics and /metrics/per-object (per queue only
# with prometheus.return_per_object_metrics = true, or on /metrics/per-object) and with
# rabbitmq_detailed_ on /metrics/detailed?family=queue_coarse_metrics&family=
# queue_consumer_count, always with labels vhost and queue. Checked against RabbitMQ 3.10.8
# (Debian bookworm's rabbitmq-server) with the plugin enabled: all three endpoints, those names.
RABBITMQ_METRICS = frozenset(
    f"{prefix}queue_{name}"
    for prefix in ("rabbitmq_", "rabbitmq_detailed_")
    for name in ("messages", "messages_ready", "messages_unacked", "consumers")
)

# Prometheus's own per-target series.
PROMETHEUS_METRICS = frozenset({"up"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
)
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects."""
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    while _RANGE.search(text):
        text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _TOKEN.finditer(text):
        name = match.group("name")
        if name is None or name.lower() in _KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(name)
    return names


def _payhook_families() -> list[Metric]:
    import ingress.metrics  # noqa: F401  (registers the ingress's metrics)
    import workers.metrics  # noqa: F401  (registers the workers')

    return [f for f in REGISTRY.collect() if f.name.startswith("payhook_")]


def payhook_metric_families() -> dict[str, str]:
    """payhook's metrics as a person names them → their type: a counter by its ``_total``
    series, a histogram by its base name."""
    return {
        f"{f.name}_total" if f.type == "counter" else f.name: f.type for f in _payhook_families()
    }


def payhook_metric_names() -> set[str]:
    """Every series name payhook's metrics expose (``_total``, ``_bucket`` … included)."""
    names: set[str] = set()
    for family in _payhook_families():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif family.type == "summary":
            names.update({family.name, f"{family.name}_sum", f"{family.name}_count"})
        else:
            names.add(family.name)
    return names


def known_names() -> set[str]:
    return payhook_metric_names() | RABBITMQ_METRICS | PROMETHEUS_METRICS
