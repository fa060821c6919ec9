"""deploy/compose.yaml: valid per the Compose Specification, and every role wired like the others.

The schema is the compose-spec JSON Schema that check-jsonschema ships (its vendored copy of
compose-spec/compose-spec's schema/compose-spec.json), read from the installed package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from contracts.config import parse_config
from payhook.config_files import load_config, read_secret_file

from .helpers import COMPOSE, DEPLOY, RABBITMQ_CONF_DIR, ROLES, load_yaml

SECRETS_DIR = "/run/secrets"


def compose() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE))


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def schema_errors(document: Any) -> list[str]:
    schema = json.loads(
        (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_spec() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_catches_a_misspelt_key() -> None:
    document = compose()
    document["services"]["ingress"] = {**document["services"]["ingress"], "restarts": "always"}
    assert schema_errors(document)


@pytest.mark.parametrize("role", ROLES)
def test_role_service(role: str) -> None:
    service = services()[role]
    assert service["command"] == ROLES[role]
    assert service["image"] == services()["migrate"]["image"]
    assert service["restart"] in ("on-failure", "unless-stopped", "always")
    assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}

    check = service["healthcheck"]
    assert not check.get("disable")
    test = " ".join(check["test"])
    assert re.search(r"http://127\.0\.0\.1:8082/(readyz|healthz)", test), test
    # Docker must not SIGKILL before payhook's own grace period is over.
    grace = float(service["environment"]["PAYHOOK_SHUTDOWN_GRACE_S"])
    assert _seconds(service["stop_grace_period"]) >= grace + 5
    assert service["read_only"] is True


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_migrate_is_a_one_shot_after_postgres() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (COMPOSE.parent / migrate["build"]["context"] / migrate["build"]["dockerfile"]).exists()


def test_stateful_services_and_the_merchant_are_health_checked() -> None:
    for name in ("postgres", "rabbitmq", "merchant"):
        service = services()[name]
        assert service["healthcheck"]["test"][0] == "CMD"
        assert service["restart"] == "unless-stopped"


def test_config_and_secrets_load_as_the_containers_see_them(tmp_path: Path) -> None:
    document = compose()
    env = services()["ingress"]["environment"]
    [config_mount] = services()["ingress"]["configs"]
    assert config_mount["target"] == env["PAYHOOK_CONFIG_PATH"]
    toml = (COMPOSE.parent / document["configs"][config_mount["source"]]["file"]).read_text()

    secrets = {name: COMPOSE.parent / spec["file"] for name, spec in document["secrets"].items()}
    referenced = set(re.findall(r'"file:([^"]+)"', toml))
    assert referenced == {f"{SECRETS_DIR}/{name}" for name in secrets}
    for role in [*ROLES, "migrate"]:
        assert sorted(services()[role]["secrets"]) == sorted(secrets)
    for name, source in secrets.items():
        (tmp_path / name).write_bytes(source.read_bytes())
    data = tomllib.loads(toml.replace(f"file:{SECRETS_DIR}/", f"file:{tmp_path}/"))
    config = parse_config(data, base_dir=tmp_path, environ={}, read_file=read_secret_file)

    # Webhooks go to the sample merchant service, on the port it listens on.
    [merchant] = config.merchants.values()
    url = urlsplit(merchant.webhook_url)
    assert url.hostname == "merchant"
    assert f'("0.0.0.0", {url.port})' in " ".join(services()["merchant"]["command"])
    assert merchant.allow_private

    # The same accounts as deploy/payhook.toml, so the README's walk-through works unchanged.
    sample = load_config(DEPLOY / "payhook.toml", environ={})
    assert {k: dict(a.options) for k, a in config.accounts.items()} == {
        k: dict(a.options) for k, a in sample.accounts.items()
    }
    assert {k: a.secrets for k, a in config.accounts.items()} == {
        k: a.secrets for k, a in sample.accounts.items()
    }


def test_the_rabbitmq_user_is_the_one_payhook_connects_as() -> None:
    url = urlsplit(services()["ingress"]["environment"]["PAYHOOK_AMQP_URL"])
    users = json.loads((DEPLOY / "compose" / "rabbitmq" / "users.json").read_text())
    [user] = users["users"]
    assert user["name"] == url.username
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    raw = base64.b64decode(user["password_hash"])
    salt, digest = raw[:4], raw[4:]
    assert hashlib.sha256(salt + (url.password or "").encode()).digest() == digest
    [permission] = users["permissions"]
    assert permission["user"] == user["name"]


def test_rabbitmq_mounts() -> None:
    rabbitmq = services()["rabbitmq"]
    mounts = [m.split(":") for m in rabbitmq["volumes"] if m.startswith("./")]
    sources = {Path(source).parts[0] for source, *_ in mounts}
    assert sources == {"rabbitmq", "compose"}
    for source, target, *_ in mounts:
        path = (COMPOSE.parent / source).resolve()
        if path.is_relative_to(RABBITMQ_CONF_DIR) and not RABBITMQ_CONF_DIR.exists():
            continue  # deploy/rabbitmq/ comes with the broker settings work
        assert path.is_file(), f"{source} is missing"
        assert target.startswith("/etc/rabbitmq/")
    conf = (DEPLOY / "compose" / "rabbitmq" / "compose.conf").read_text()
    folder = re.search(r"^load_definitions = (\S+)$", conf, flags=re.MULTILINE)
    assert folder
    imported = [t for _, t, *_ in mounts if t.startswith(folder.group(1) + "/")]
    assert sorted(Path(t).name for t in imported) == ["00-users.json", "10-payhook.json"]
