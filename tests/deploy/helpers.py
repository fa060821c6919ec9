"""What the deploy/ checks share: paths, payhook's real settings and commands, file loaders."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from contracts.config import Settings

__all__ = [
    "COMPOSE",
    "DEPLOY",
    "K8S",
    "RABBITMQ_CONF_DIR",
    "REPO",
    "ROLES",
    "help_commands",
    "load_yaml",
    "rabbitmq_conf",
    "setting_names",
    "walk",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
# Owned by the broker configuration work; referenced by compose and the RabbitmqCluster.
RABBITMQ_CONF_DIR = DEPLOY / "rabbitmq"

# Role -> the arguments after `payhook` that run it alone.
ROLES: dict[str, list[str]] = {
    "ingress": ["ingress"],
    "admin": ["admin"],
    "ledger": ["worker", "ledger"],
    "relay": ["relay"],
    "webhooks": ["worker", "webhooks"],
}


def setting_names() -> set[str]:
    """``PAYHOOK_<FIELD>`` for every field of ``contracts.config.Settings``."""
    return {f"PAYHOOK_{name.upper()}" for name in Settings.__dataclass_fields__}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def walk(value: Any) -> Iterator[Any]:
    """Every value inside nested dicts and lists, the containers included."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


@functools.cache
def help_commands() -> dict[tuple[str, ...], list[str]]:
    """The subcommands ``payhook --help`` (and ``payhook worker --help``) list, by prefix."""
    payhook = Path(sys.executable).with_name("payhook")
    commands: dict[tuple[str, ...], list[str]] = {}
    for prefix in ((), ("worker",)):
        out = subprocess.run(
            [str(payhook), *prefix, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        # argparse lists subcommands as indented "name   help" lines under the COMMAND/WORKER
        # metavar line.
        block = out.split("positional arguments:", 1)[1].split("options:", 1)[0]
        commands[prefix] = re.findall(r"^    (\S+)", block, flags=re.MULTILINE)
    return commands


def rabbitmq_conf(text: str) -> dict[str, str]:
    """``key = value`` lines of a rabbitmq.conf (new-style, sysctl format), comments dropped."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings
