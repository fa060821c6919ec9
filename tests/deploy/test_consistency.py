"""deploy/ speaks payhook's real interface: settings, commands and health endpoints.

- every ``PAYHOOK_*`` name in deploy/ and docs/deploy.md is a field of
  ``contracts.config.Settings`` (``PAYHOOK_<FIELD>``);
- every environment variable given to a payhook container is such a setting, or a helper that
  only feeds ``$(NAME)`` expansion in the same container;
- every command the Dockerfile, compose and Kubernetes run is listed by ``payhook --help``;
- every probe and health check asks /healthz or /readyz.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dockerfile

from .helpers import (
    COMPOSE,
    DEPLOY,
    K8S,
    REPO,
    help_commands,
    load_yaml,
    setting_names,
    walk,
)
from .kustomize import render

PAYHOOK_IMAGE = re.compile(r"(^|/)payhook([:@]|$)")


def deploy_texts() -> dict[Path, str]:
    paths = [p for p in DEPLOY.rglob("*") if p.is_file() and "dev-secrets" not in p.parts]
    paths.append(REPO / "docs" / "deploy.md")
    return {p: p.read_text("utf-8") for p in paths if p.exists()}


def k8s_workloads() -> list[dict[str, Any]]:
    resources, _ = render(K8S / "overlays" / "example")
    return [r for r in resources if r["kind"] in ("Deployment", "Job")]


def compose_payhook_services() -> dict[str, dict[str, Any]]:
    services = load_yaml(COMPOSE)["services"]
    return {n: s for n, s in services.items() if PAYHOOK_IMAGE.search(s.get("image", ""))}


def test_every_payhook_name_in_deploy_is_a_setting() -> None:
    known = setting_names()
    unknown = {
        f"{path.relative_to(REPO)}: {name}"
        for path, text in deploy_texts().items()
        for name in re.findall(r"\bPAYHOOK_[A-Z0-9_]*[A-Z0-9]", text)
        if name not in known
    }
    assert not unknown, sorted(unknown)


def test_payhook_containers_get_only_real_settings() -> None:
    known = setting_names()
    for name, service in compose_payhook_services().items():
        assert set(service["environment"]) <= known, name
    for command in dockerfile.parse_file(str(DEPLOY / "Dockerfile")):
        if command.cmd == "ENV":
            names = set(command.value[::2]) - {"PATH"}
            names = {n for n in names if not n.startswith(("PYTHON", "PIP_"))}
            assert names <= known, names
    for workload in k8s_workloads():
        env = workload["spec"]["template"]["spec"]["containers"][0]["env"]
        expanded = {m for e in env for m in re.findall(r"\$\((\w+)\)", e.get("value", ""))}
        for entry in env:
            if entry["name"] not in known:
                assert entry["name"] in expanded, f"{workload['metadata']['name']}: {entry}"
                assert not entry["name"].startswith("PAYHOOK_")


def _commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for name, service in compose_payhook_services().items():
        found.append((f"compose {name}", list(service["command"])))
    for workload in k8s_workloads():
        c = workload["spec"]["template"]["spec"]["containers"][0]
        assert PAYHOOK_IMAGE.search(c["image"]), c["image"]
        assert "command" not in c, "the image's ENTRYPOINT is payhook: give args only"
        found.append((f"k8s {workload['metadata']['name']}", list(c["args"])))
    return found


def test_every_command_run_is_a_payhook_command() -> None:
    commands = help_commands()
    commands_run = _commands()
    assert len(commands_run) >= 12
    for where, argv in commands_run:
        assert argv[0] in commands[()], f"{where}: payhook {' '.join(argv)}"
        if argv[0] == "worker":
            assert argv[1] in commands[("worker",)], f"{where}: payhook {' '.join(argv)}"


def test_every_probe_asks_a_health_endpoint() -> None:
    probes = 0
    for workload in k8s_workloads():
        for value in walk(workload):
            if isinstance(value, dict) and "httpGet" in value:
                assert value["httpGet"]["path"] in ("/healthz", "/readyz")
                probes += 1
    assert probes >= 15  # three per Deployment
    for name, service in compose_payhook_services().items():
        check = service["healthcheck"]
        if check.get("disable"):
            assert service["command"] == ["migrate"], f"{name}: only the one-shot has none"
            continue
        assert re.search(r":8082/(healthz|readyz)'", " ".join(check["test"])), name
