"""deploy/prometheus: the alerting rules are valid, pass their unit tests, and read real metrics.

- ``promtool check rules`` and ``promtool test rules`` succeed, and fail on broken copies (the
  control: a syntax error, and a changed threshold the unit tests must notice);
- every alert carries a severity, a summary, a description and a runbook_url pointing at its
  own entry in docs/operations.md;
- every alert has a unit test in which it fires and one in which it does not;
- every metric name in every expression is one payhook, RabbitMQ or Prometheus exposes;
- docs/operations.md documents every payhook metric and no other, and its Prometheus
  configuration example passes ``promtool check config`` with these rules loaded;
- every payhook Deployment carries the scrape annotations that example relies on.

promtool comes from Debian's prometheus package; scripts/test installs it when it is missing
(``payhook_promtool`` in scripts/lib.sh).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import DEPLOY, K8S, REPO, load_yaml
from .kustomize import render
from .promql import known_names, metric_names, payhook_metric_families, payhook_metric_names

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not on PATH: scripts/test installs it (apt-get install prometheus, "
            "payhook_promtool in scripts/lib.sh)"
        )
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def alerts() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_sections(text: str) -> dict[str, str]:
    """``## Title`` → its body, up to the next ``## `` heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in load_yaml(RULES)["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_promtool_fails_broken_copies(tmp_path: Path) -> None:
    """The control: the two commands above can fail, and do for a broken rule file."""
    rules = RULES.read_text("utf-8")
    # Only the lag alert's tests, which is all this needs (the whole file takes seconds).
    cases = load_yaml(RULE_TESTS)
    cases["tests"] = [
        case
        for case in cases["tests"]
        if any(c["alertname"] == "PayhookLedgerLagHigh" for c in case["alert_rule_test"])
    ]
    assert cases["tests"]
    (tmp_path / RULE_TESTS.name).write_text(yaml.safe_dump(cases), "utf-8")
    (tmp_path / RULES.name).write_text(rules, "utf-8")
    assert promtool("test", "rules", tmp_path / RULE_TESTS.name).returncode == 0

    (tmp_path / RULES.name).write_text(rules.replace(" > 30\n", " > \n", 1), "utf-8")
    result = promtool("check", "rules", tmp_path / RULES.name)
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr

    # Valid, but the lag threshold moved: the unit test of that alert must notice.
    (tmp_path / RULES.name).write_text(rules.replace(" > 30\n", " > 60\n", 1), "utf-8")
    assert promtool("check", "rules", tmp_path / RULES.name).returncode == 0
    result = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode != 0, result.stdout
    assert "PayhookLedgerLagHigh" in result.stdout + result.stderr


def test_every_alert_is_labelled_and_annotated() -> None:
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text("utf-8"), re.M)}
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), names
    assert len(names) >= 16
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/operations.md", name
        assert anchor == name.lower(), f"{name}: its runbook entry is the heading {name}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading #{anchor}"


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "no test where these fire"
    assert names - quiet == set(), "no test where these stay quiet"
    assert (fires | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_expression_reads_real_metrics() -> None:
    known = known_names()
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, f"{rule['alert']}: unknown metrics {sorted(names - known)}"


def test_the_metric_name_check_can_fail() -> None:
    """The control for the check above: a renamed or made-up metric is caught."""
    known = known_names()
    assert "payhook_ledger_lag_seconds_bucket" in known
    assert "payhook_ingress_callbacks_total" in known
    assert "payhook_ledger_lag_seconds" not in known  # a histogram has no bare series
    assert "payhook_ingress_callbacks" not in known  # a counter's series end in _total
    expr = 'histogram_quantile(0.95, sum by (le) (rate(payhook_ledger_lag_secs_bucket{a="b"}[5m])))'
    assert metric_names(expr) - known == {"payhook_ledger_lag_secs_bucket"}
    assert metric_names(
        'max by (queue) (rabbitmq_detailed_queue_messages{queue=~"x"} or rabbitmq_queue_depth)'
        " unless on () sum(rate(up[5m] offset 10m)) > 1e3 and vector(1)"
    ) == {"rabbitmq_detailed_queue_messages", "rabbitmq_queue_depth", "up"}


def test_operations_documents_every_metric() -> None:
    text = OPERATIONS.read_text("utf-8")
    rows = re.findall(r"^\| `(payhook_\w+)` \| (\w+) \|", doc_sections(text)["Metrics"], re.M)
    assert dict(rows) == payhook_metric_families()
    # Anything else in the page that looks like one of payhook's series is one.
    series = payhook_metric_names() | set(payhook_metric_families())
    mentioned = set(re.findall(r"\bpayhook_(?:ingress|ledger|relay|webhook)_\w*[a-z]", text))
    assert mentioned <= series, sorted(mentioned - series)


def documented_configs() -> list[dict[str, Any]]:
    section = doc_sections(OPERATIONS.read_text("utf-8"))["Metrics"]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    return [yaml.safe_load(b) for b in blocks if "scrape_configs:" in b]


def test_the_documented_prometheus_configurations_are_valid(tmp_path: Path) -> None:
    configs = documented_configs()
    assert len(configs) == 2  # Kubernetes, and static targets
    for n, config in enumerate(configs):
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert set(jobs) == {"payhook", "rabbitmq-queues"}
        queues = jobs["rabbitmq-queues"]
        assert queues["metrics_path"] == "/metrics/detailed"
        assert queues["params"]["family"] == ["queue_coarse_metrics", "queue_consumer_count"]
        assert config["rule_files"], "the example loads the alerting rules"
        # Checked with these rules instead of the example's path.
        config["rule_files"] = [str(RULES)]
        # Debian's Prometheus is built without Kubernetes discovery, so its promtool refuses
        # kubernetes_sd_configs: check the rest (relabelling included) with a static target;
        # what the discovery's labels must match is the next test's business.
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:8082"]}]
        path = tmp_path / f"prometheus-{n}.yml"
        path.write_text(yaml.safe_dump(config), "utf-8")
        result = promtool("check", "config", path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


def _meta_name(key: str) -> str:
    """A Kubernetes label or annotation as Prometheus's discovery names it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def test_the_kubernetes_scrape_configuration_matches_the_pods() -> None:
    """Every pod label and annotation the relabelling reads exists on every payhook pod."""
    config = next(c for c in documented_configs() if "kubernetes_sd_configs" in str(c))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "payhook")
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    read = {
        label
        for relabel in job["relabel_configs"]
        for label in relabel.get("source_labels", [])
        if label.startswith(("__meta_kubernetes_pod_label_", "__meta_kubernetes_pod_annotation_"))
    }
    assert "__meta_kubernetes_pod_annotation_prometheus_io_scrape" in read
    resources, _ = render(K8S / "overlays" / "example")
    namespaces = {sd["namespaces"]["names"][0] for sd in job["kubernetes_sd_configs"]}
    for deployment in (r for r in resources if r["kind"] == "Deployment"):
        assert deployment["metadata"]["namespace"] in namespaces
        meta = deployment["spec"]["template"]["metadata"]
        have = {f"__meta_kubernetes_pod_label_{_meta_name(k)}" for k in meta["labels"]} | {
            f"__meta_kubernetes_pod_annotation_{_meta_name(k)}" for k in meta["annotations"]
        }
        assert read <= have, f"{deployment['metadata']['name']}: {sorted(read - have)}"
    # The broker's pods carry app.kubernetes.io/name = the RabbitmqCluster's name (the
    # operator's labelling).
    keep = next(r for r in config["scrape_configs"] if r["job_name"] == "rabbitmq-queues")
    clusters = [r["metadata"]["name"] for r in resources if r["kind"] == "RabbitmqCluster"]
    assert keep["relabel_configs"][0]["regex"] == f"{clusters[0]};15692"


def test_every_payhook_pod_carries_the_scrape_annotations() -> None:
    resources, _ = render(K8S / "base")
    deployments = [r for r in resources if r["kind"] == "Deployment"]
    assert len(deployments) == 5
    for deployment in deployments:
        template = deployment["spec"]["template"]
        name = deployment["metadata"]["name"]
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "payhook", name
        assert template["metadata"]["labels"]["app.kubernetes.io/component"], name
        annotations = template["metadata"]["annotations"]
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(ports["health"]), name
        assert annotations["prometheus.io/path"] == "/metrics", name
