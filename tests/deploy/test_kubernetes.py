"""deploy/k8s: renders, validates against the Kubernetes schemas, and wires payhook correctly.

Built-in kinds are validated (strict: unknown fields are errors) with kubernetes-validate's
offline schemas for the oldest and the newest Kubernetes version we claim. The operators'
custom resources (RabbitmqCluster, Policy, CloudNativePG Cluster) have no schema in any
registry package, so the fields payhook relies on are checked one by one instead.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from contracts.config import Settings, parse_config
from payhook.config_files import read_secret_file

from .helpers import K8S, RABBITMQ_CONF_DIR, ROLES, rabbitmq_conf
from .kustomize import build, real_kustomize, render

Resource = dict[str, Any]

KUBERNETES_VERSIONS = ["1.30.0", "1.35.0"]
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "example"]
OVERLAY = K8S / "overlays" / "example"
OPERATOR_KINDS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    ("rabbitmq.com/v1beta1", "Policy"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}
SECRETS_DIR = "/etc/payhook/secrets"


@functools.cache
def rendered(path: Path) -> tuple[Resource, ...]:
    resources, _ = render(path)
    return tuple(resources)


def one(resources: tuple[Resource, ...], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def by_kind(resources: tuple[Resource, ...], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def container(resource: Resource) -> dict[str, Any]:
    containers = resource["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(resource: Resource) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(resource).get("env", [])}


# --------------------------------------------------------------------------- render, schemas


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_loader_renders_what_kustomize_renders(path: Path) -> None:
    if real_kustomize() is None:
        pytest.skip("no kustomize or kubectl here: the tests render with the loader alone")

    def key(r: Resource) -> tuple[str, str, str]:
        return (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])

    real = {key(r): r for r in rendered(path)}
    ours = {key(r): r for r in build(path)}
    assert sorted(ours) == sorted(real)
    for name, resource in real.items():
        assert ours[name] == resource, f"{name} differs"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_manifests_validate_against_kubernetes_schemas(path: Path, version: str) -> None:
    custom = set()
    for resource in rendered(path):
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.add((resource["apiVersion"], resource["kind"]))
        except kubernetes_validate.ValidationError as exc:
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            pytest.fail(f"{path.name}: {name} invalid for Kubernetes {version}: {exc.message}")
    assert custom == OPERATOR_KINDS


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = dict(one(rendered(OVERLAY), "Deployment", "payhook-ingress"))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- the roles


@pytest.mark.parametrize("role", ROLES)
def test_role_deployment(role: str) -> None:
    resources = rendered(OVERLAY)
    deployment = one(resources, "Deployment", f"payhook-{role}")
    pod = deployment["spec"]["template"]
    c = container(deployment)
    assert c["args"] == ROLES[role]
    assert c["image"].startswith("registry.example.com/payhook:")

    # Probes: liveness on /healthz, readiness on /readyz, both on the health listener.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    health_port = getattr(Settings(), "health_port", 8082)
    assert ports["health"] == health_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{role}: {kind}"

    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0

    # The orchestrator's grace covers payhook's own (plus the ingress's preStop pause).
    env = env_of(deployment)
    grace = float(env["PAYHOOK_SHUTDOWN_GRACE_S"]["value"])
    pause = 0
    if pre_stop := c.get("lifecycle", {}).get("preStop"):
        assert pre_stop["exec"]["command"][0] == "sleep"
        pause = int(pre_stop["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= grace + pause + 5

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budgets = [
        b
        for b in by_kind(resources, "PodDisruptionBudget")
        if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(budgets) == 1, f"{role}: one PodDisruptionBudget"
    # maxUnavailable (not minAvailable) so that a single-replica role never blocks a drain.
    assert budgets[0]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("role", ["ingress", "ledger"])
def test_autoscaled_roles(role: str) -> None:
    resources = rendered(OVERLAY)
    hpa = one(resources, "HorizontalPodAutoscaler", f"payhook-{role}")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"payhook-{role}",
    }
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # No replicas in the Deployment: every `kubectl apply` would reset the autoscaler's count.
    assert "replicas" not in one(resources, "Deployment", f"payhook-{role}")["spec"]
    scaled = {
        h["spec"]["scaleTargetRef"]["name"] for h in by_kind(resources, "HorizontalPodAutoscaler")
    }
    assert scaled == {"payhook-ingress", "payhook-ledger"}


def test_services_reach_the_listeners() -> None:
    resources = rendered(OVERLAY)
    defaults = Settings()
    for role, port_name, port in [
        ("ingress", "http", defaults.listen_port),
        ("admin", "admin", defaults.admin_port),
    ]:
        service = one(resources, "Service", f"payhook-{role}")
        assert service["spec"]["type"] == "ClusterIP"
        deployment = one(resources, "Deployment", f"payhook-{role}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        [service_port] = service["spec"]["ports"]
        assert service_port["targetPort"] == port_name
        ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        assert ports[port_name] == port
    route = one(resources, "Ingress", "payhook")
    [rule] = route["spec"]["rules"]
    backends = {p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert backends == {"payhook-ingress"}


def test_migration_job() -> None:
    resources = rendered(OVERLAY)
    job = one(resources, "Job", "payhook-migrate")
    c = container(job)
    assert c["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1
    # Same image, settings and files as the roles it prepares the database for.
    ingress = one(resources, "Deployment", "payhook-ingress")
    assert c["image"] == container(ingress)["image"]
    assert env_of(job) == env_of(ingress)
    assert c["volumeMounts"] == container(ingress)["volumeMounts"]


# --------------------------------------------------------------------------- config, secrets


def test_config_and_secrets_load_as_payhook_would(tmp_path: Path) -> None:
    """Mount the generated ConfigMap and Secret as the pods do, then parse the config."""
    resources = rendered(OVERLAY)
    deployment = one(resources, "Deployment", "payhook-ingress")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    config_path = Path(env_of(deployment)["PAYHOOK_CONFIG_PATH"]["value"])
    assert str(config_path.parent) == mounts["config"]
    assert mounts["secrets"] == SECRETS_DIR

    configmap = one(resources, "ConfigMap", volumes["config"]["configMap"]["name"])
    secret = one(resources, "Secret", volumes["secrets"]["secret"]["secretName"])
    toml = configmap["data"][config_path.name]
    referenced = set(re.findall(r'"file:([^"]+)"', toml))
    files = {f"{SECRETS_DIR}/{key}" for key in secret["data"]}
    assert referenced == files, "every file: reference is a key of the Secret, and back"

    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    data = tomllib.loads(toml.replace(f"file:{SECRETS_DIR}/", f"file:{tmp_path}/"))
    config = parse_config(data, base_dir=tmp_path, environ={}, read_file=read_secret_file)
    assert config.accounts
    assert config.merchants
    assert config.admin_tokens
    for merchant in config.merchants.values():
        assert merchant.webhook_url.startswith("https://")
        assert not merchant.allow_private


# --------------------------------------------------------------------------- operators


def test_postgres_cluster() -> None:
    resources = rendered(OVERLAY)
    [cluster] = by_kind(resources, "Cluster")
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert spec["instances"] == 3
    sync = spec["postgresql"]["synchronous"]
    assert sync["method"] in ("any", "first")
    assert 1 <= sync["number"] < spec["instances"]
    # A commit must wait for a standby even when standbys are missing: the ledger's promise.
    assert sync["dataDurability"] == "required"
    assert spec["bootstrap"]["initdb"]["database"] == "payhook"
    assert spec["affinity"]["enablePodAntiAffinity"] is True
    assert set(spec) <= {
        "instances",
        "imageName",
        "postgresql",
        "primaryUpdateStrategy",
        "bootstrap",
        "affinity",
        "storage",
        "resources",
        "monitoring",
        "backup",
        "walStorage",
    }
    # payhook's database URL is the operator's application secret <cluster>-app.
    for workload in by_kind(resources, "Deployment") + by_kind(resources, "Job"):
        ref = env_of(workload)["PAYHOOK_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}


def test_rabbitmq_cluster_and_the_amqp_url_list() -> None:
    resources = rendered(OVERLAY)
    [cluster] = by_kind(resources, "RabbitmqCluster")
    spec = cluster["spec"]
    name = cluster["metadata"]["name"]
    assert spec["replicas"] == 3
    assert "rabbitmq_prometheus" in spec["rabbitmq"]["additionalPlugins"]
    assert set(spec) <= {"replicas", "image", "affinity", "resources", "persistence", "rabbitmq"}
    assert set(spec["rabbitmq"]) <= {"additionalPlugins", "additionalConfig", "advancedConfig"}
    assert rabbitmq_conf(spec["rabbitmq"]["additionalConfig"])  # key = value lines

    [policy] = by_kind(resources, "Policy")
    assert policy["spec"]["rabbitmqClusterReference"] == {"name": name}

    # Every node by its DNS name under the operator's headless service, credentials from the
    # operator's default-user secret.
    for workload in by_kind(resources, "Deployment") + by_kind(resources, "Job"):
        env = env_of(workload)
        for var, key in (("RABBITMQ_USERNAME", "username"), ("RABBITMQ_PASSWORD", "password")):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": f"{name}-default-user", "key": key}
        urls = env["PAYHOOK_AMQP_URL"]["value"].split(",")
        hosts = [
            re.fullmatch(
                r"amqp://\$\(RABBITMQ_USERNAME\):\$\(RABBITMQ_PASSWORD\)@([^:/]+):5672/", u
            )
            for u in urls
        ]
        assert all(hosts), urls
        assert [h.group(1) for h in hosts if h] == [
            f"{name}-server-{i}.{name}-nodes" for i in range(spec["replicas"])
        ]
        # $(VAR) expands only variables defined earlier in the list.
        names = [e["name"] for e in container(workload)["env"]]
        assert names.index("RABBITMQ_PASSWORD") < names.index("PAYHOOK_AMQP_URL")

    budget = one(resources, "PodDisruptionBudget", name)
    assert budget["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}


def _erlang_terms(text: str) -> str:
    return re.sub(r"\s+", "", "\n".join(line.split("%", 1)[0] for line in text.splitlines()))


def test_rabbitmq_cluster_carries_deploy_rabbitmq() -> None:
    """The RabbitmqCluster's copy of deploy/rabbitmq/ says what those files say."""
    if not (RABBITMQ_CONF_DIR / "rabbitmq.conf").exists():
        pytest.skip("deploy/rabbitmq/ is not in this checkout yet (the broker settings work)")
    resources = rendered(OVERLAY)
    [cluster] = by_kind(resources, "RabbitmqCluster")
    rabbitmq = cluster["spec"]["rabbitmq"]

    wanted = rabbitmq_conf((RABBITMQ_CONF_DIR / "rabbitmq.conf").read_text("utf-8"))
    assert rabbitmq_conf(rabbitmq["additionalConfig"]) == wanted

    advanced = RABBITMQ_CONF_DIR / "advanced.config"
    if advanced.exists():
        assert _erlang_terms(rabbitmq["advancedConfig"]) == _erlang_terms(advanced.read_text())

    plugins_file = RABBITMQ_CONF_DIR / "enabled_plugins"
    if plugins_file.exists():
        plugins = re.findall(r"[a-z_]+", plugins_file.read_text())
        assert set(plugins) <= set(rabbitmq["additionalPlugins"])

    definitions_file = RABBITMQ_CONF_DIR / "definitions.json"
    if definitions_file.exists():
        definitions = json.loads(definitions_file.read_text("utf-8"))
        wanted_policies = {
            p["name"]: {
                "name": p["name"],
                "vhost": p["vhost"],
                "pattern": p["pattern"],
                "applyTo": p["apply-to"],
                "priority": p["priority"],
                "definition": p["definition"],
            }
            for p in definitions.get("policies", [])
        }
        policies = {
            p["spec"]["name"]: {
                k: v for k, v in p["spec"].items() if k != "rabbitmqClusterReference"
            }
            for p in by_kind(resources, "Policy")
        }
        assert policies == wanted_policies


def test_the_install_selector_splits_prerequisites_from_roles() -> None:
    """docs/deploy.md applies `component notin (roles)` first, then everything."""
    resources = rendered(OVERLAY)

    def first_phase(resource: Resource) -> bool:
        labels = resource["metadata"].get("labels", {})
        return labels.get("app.kubernetes.io/component") not in ROLES

    first = [r for r in resources if first_phase(r)]
    kinds = {r["kind"] for r in first}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Job"} <= kinds
    assert {"Cluster", "RabbitmqCluster", "Policy"} <= kinds
    assert not kinds & {"Deployment", "HorizontalPodAutoscaler", "Ingress"}
    # What the Job mounts and reads is applied with it.
    job = one(resources, "Job", "payhook-migrate")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    needed = {("ConfigMap", v["configMap"]["name"]) for v in volumes if "configMap" in v}
    needed |= {("Secret", v["secret"]["secretName"]) for v in volumes if "secret" in v}
    assert needed <= {(r["kind"], r["metadata"]["name"]) for r in first}
    for deployment in by_kind(resources, "Deployment"):
        assert not first_phase(deployment)
