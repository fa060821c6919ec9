"""deploy/grafana/payhook.json: a Grafana dashboard whose every query reads real metrics.

- valid JSON, schemaVersion 36 or newer, a ``prometheus`` data source variable that every
  panel and query uses;
- the rows ingress, ledger, relay, webhooks and broker; panel ids unique, panels inside the
  24-column grid and not overlapping;
- every panel has a query; every metric name in every query is one payhook, RabbitMQ or
  Prometheus exposes (tests/deploy/promql.py: payhook's from prometheus_client's registry), and
  every payhook metric is shown somewhere;
- every query is valid PromQL: ``promtool check rules`` on them as recording rules, Grafana's
  variables replaced by values.

``problems()`` does the checks; the controls feed it broken copies.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from .helpers import DEPLOY
from .promql import known_names, metric_names, payhook_metric_names
from .test_prometheus import promtool

DASHBOARD = DEPLOY / "grafana" / "payhook.json"
ROWS = ["Processes", "Ingress", "Ledger", "Relay", "Webhooks", "Broker"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's variables, replaced for promtool (the values do not matter, the syntax does).
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$ns": "payhook"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query."""
    return [
        (panel["title"], target.get("expr", ""))
        for panel in panels(dashboard)
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]


def problems(dashboard: dict[str, Any]) -> list[str]:
    found: list[str] = []
    if dashboard.get("schemaVersion", 0) < 36:
        found.append(f"schemaVersion {dashboard.get('schemaVersion')} < 36")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if (source.get("type"), source.get("query")) != ("datasource", "prometheus"):
        found.append("no prometheus data source variable named datasource")
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    if rows != ROWS:
        found.append(f"rows {rows}, want {ROWS}")
    ids = [p["id"] for p in panels(dashboard)]
    if len(ids) != len(set(ids)):
        found.append("panel ids repeat")
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        title = panel["title"]
        grid = panel["gridPos"]
        if grid["x"] < 0 or grid["x"] + grid["w"] > 24:
            found.append(f"{title}: outside the grid")
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        if taken := sorted({cells[c] for c in mine if c in cells}):
            found.append(f"{title}: overlaps {', '.join(taken)}")
        cells.update(dict.fromkeys(mine, title))
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        if not targets or not all(t.get("expr", "").strip() for t in targets):
            found.append(f"{title}: a panel without a query")
        if panel.get("datasource") != DATASOURCE or any(
            t.get("datasource") != DATASOURCE for t in targets
        ):
            found.append(f"{title}: not on the ${{datasource}} variable")
    known = known_names()
    used: set[str] = set()
    for title, expr in queries(dashboard):
        names = metric_names(expr)
        used |= names
        if expr.strip() and not names:
            found.append(f"{title}: reads no metric: {expr}")
        if unknown := names - known:
            found.append(f"{title}: unknown metrics {sorted(unknown)}")
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in payhook_metric_names()}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    if missing := bases - shown:
        found.append(f"payhook metrics on no panel: {sorted(missing)}")
    return found


def test_the_dashboard_is_valid_json() -> None:
    assert isinstance(load(), dict)
    assert load()["uid"] == "payhook"


def test_the_dashboard_has_no_problems() -> None:
    assert problems(load()) == []
    assert len(queries(load())) >= 30


def test_problems_are_found() -> None:
    """The controls: each check above can fail."""
    dashboard = load()

    renamed = copy.deepcopy(dashboard)
    target = next(p for p in panels(renamed) if p["title"] == "Lag p50 / p95")["targets"][0]
    target["expr"] = target["expr"].replace("payhook_ledger_lag_seconds", "payhook_ledger_delay")
    assert problems(renamed) == ["Lag p50 / p95: unknown metrics ['payhook_ledger_delay_bucket']"]

    no_query = copy.deepcopy(dashboard)
    next(p for p in panels(no_query) if p["title"] == "Outbox pending")["targets"] = []
    assert problems(no_query) == [
        "Outbox pending: a panel without a query",
        "payhook metrics on no panel: ['payhook_relay_outbox_pending']",
    ]

    old = copy.deepcopy(dashboard)
    old["schemaVersion"] = 27
    old["templating"]["list"] = []
    assert problems(old) == [
        "schemaVersion 27 < 36",
        "no prometheus data source variable named datasource",
    ]

    moved = copy.deepcopy(dashboard)
    panel = next(p for p in panels(moved) if p["title"] == "Events published/s")
    panel["gridPos"]["x"] = 4
    panel["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    assert problems(moved) == [
        "Events published/s: not on the ${datasource} variable",
        "Outbox pending: overlaps Events published/s",
    ]


def recording_rules(dashboard: dict[str, Any]) -> dict[str, Any]:
    """Every query as a recording rule, for promtool to parse."""
    rules = []
    for n, (_, expr) in enumerate(queries(dashboard)):
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    return {"groups": [{"name": "dashboard", "rules": rules}]}


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(recording_rules(load())), "utf-8")
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries(load()))} rules found" in result.stdout

    # The control: a query Grafana would refuse makes promtool fail.
    broken = load()
    target = next(p for p in panels(broken) if p["title"] == "Outbox pending")["targets"][0]
    target["expr"] = "max(payhook_relay_outbox_pending"
    path.write_text(yaml.safe_dump(recording_rules(broken)), "utf-8")
    assert promtool("check", "rules", path).returncode != 0
