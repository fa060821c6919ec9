"""Render a kustomization: with a real kustomize when there is one, else with a small loader.

``render(path)`` prefers a ``kustomize`` binary, then ``kubectl kustomize`` (kubectl embeds
kustomize), and falls back to :func:`build`, which implements exactly the subset of kustomize
that ``deploy/k8s`` uses and refuses anything else:

- ``resources``: YAML files and folders holding a ``kustomization.yaml`` (built recursively);
- ``namespace`` (not applied to cluster-scoped kinds);
- ``images`` (``newName`` / ``newTag`` / ``digest`` on containers and init containers);
- ``patches``: JSON 6902 operations (``add``, ``replace``, ``remove``), inline or from
  ``path``, on ``target`` kind + name;
- ``configMapGenerator`` / ``secretGenerator`` from ``files``, named with kustomize's content
  hash, and the references to them in pod templates renamed the way kustomize does.

When both are available, ``test_kubernetes.py`` checks that the loader renders what kustomize
renders, so the fallback cannot drift from the real thing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "build", "real_kustomize", "render"]

Resource = dict[str, Any]

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "patches",
    "configMapGenerator",
    "secretGenerator",
}
# Kinds deploy/k8s may hold that have no namespace; anything else is namespaced (kustomize
# also treats unknown kinds, such as the operators' custom resources, as namespaced).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    """The kustomization uses something this loader does not implement, or is invalid."""


def real_kustomize() -> list[str] | None:
    """The command of a real kustomize on this machine, or None."""
    if binary := shutil.which("kustomize"):
        return [binary, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    return None


def render(path: Path) -> tuple[list[Resource], str]:
    """The resources of the kustomization at ``path`` and what rendered them."""
    command = real_kustomize()
    if command is None:
        return build(path), "tests/deploy/kustomize.py"
    out = subprocess.run(
        [*command, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise KustomizeError(f"{' '.join(command)} {path}: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc], " ".join(command[:2])


def build(path: Path) -> list[Resource]:
    """Build the kustomization in folder ``path`` (the subset described in the docstring)."""
    resources, generated = _build(path.resolve())
    _rename_references(resources, generated)
    return resources


def _build(root: Path) -> tuple[list[Resource], dict[tuple[str, str], str]]:
    spec = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{root}: kustomization fields not implemented: {sorted(unknown)}")
    resources: list[Resource] = []
    generated: dict[tuple[str, str], str] = {}  # (kind, name) -> name with hash suffix
    for entry in spec.get("resources", []):
        target = (root / entry).resolve()
        if target.is_dir():
            sub, sub_generated = _build(target)
            resources += sub
            generated.update(sub_generated)
        else:
            resources += [d for d in yaml.safe_load_all(target.read_text("utf-8")) if d]
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in spec.get(key, []):
            resource = _generate(root, kind, generator)
            generated[(kind, generator["name"])] = resource["metadata"]["name"]
            resources.append(resource)
    for patch in spec.get("patches", []):
        _apply_patch(root, patch, resources)
    if namespace := spec.get("namespace"):
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = namespace
    for image in spec.get("images", []):
        _set_image(resources, image)
    return resources, generated


# ------------------------------------------------------------------------------ generators


def _generate(root: Path, kind: str, generator: dict[str, Any]) -> Resource:
    unknown = set(generator) - {"name", "files"}
    if unknown:
        raise KustomizeError(f"{kind} generator {generator['name']}: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, file = entry.rpartition("=") if "=" in entry else ("", "", entry)
        content = (root / file).read_bytes()
        key = key or Path(file).name
        if kind == "Secret":
            data[key] = base64.b64encode(content).decode()
        else:
            data[key] = content.decode("utf-8")
    resource: Resource = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": generator["name"]},
        "data": data,
    }
    if kind == "Secret":
        resource["type"] = "Opaque"
    resource["metadata"]["name"] += "-" + _content_hash(resource)
    return resource


def _content_hash(resource: Resource) -> str:
    """kustomize's name suffix (api/hasher): sha256 of Go's JSON of a few fields, 10 chars.

    The name is always empty: kustomize looks ``metadata/name`` up as one field name, which
    no resource has, so the name never enters the hash (checked against kustomize v5.5).
    """
    fields: dict[str, Any] = {"kind": resource["kind"], "name": "", "data": resource["data"]}
    if resource["kind"] == "Secret":
        fields["type"] = resource["type"]
    digest = hashlib.sha256(_go_json(fields).encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _go_json(value: Any) -> str:
    """``encoding/json.Marshal``: sorted keys, no spaces, HTML characters escaped."""
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{_go_string(k)}:{_go_json(v)}" for k, v in items) + "}"
    if isinstance(value, str):
        return _go_string(value)
    raise KustomizeError(f"cannot hash {type(value).__name__}")


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(text: str) -> str:
    out = []
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif ord(char) < 0x20 or char in "<>&\u2028\u2029":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# ------------------------------------------------------------------------------ patches


def _apply_patch(root: Path, patch: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(patch) - {"path", "patch", "target"}
    if unknown or "target" not in patch:
        raise KustomizeError(f"{root}: patches need a target; not implemented: {unknown}")
    text = (root / patch["path"]).read_text("utf-8") if "path" in patch else patch["patch"]
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"{root}: only JSON 6902 patches (a list of operations)")
    target = patch["target"]
    if set(target) - {"kind", "name"}:
        raise KustomizeError(f"{root}: patch targets by kind and name only: {target}")
    matched = [r for r in resources if _matches(r, target)]
    if not matched:
        raise KustomizeError(f"{root}: patch target {target} matches nothing")
    for resource in matched:
        for operation in operations:
            _json6902(resource, operation)


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    name = resource.get("metadata", {}).get("name", "")
    return ("kind" not in target or resource["kind"] == target["kind"]) and (
        "name" not in target or re.fullmatch(target["name"], name) is not None
    )


def _json6902(document: Resource, operation: dict[str, Any]) -> None:
    op, pointer = operation["op"], operation["path"]
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    parent: Any = document
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    if op in ("add", "replace"):
        value = copy.deepcopy(operation["value"])
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, value)
            else:
                parent[index] = value
        else:
            if op == "replace" and last not in parent:
                raise KustomizeError(f"replace: {pointer} does not exist")
            parent[last] = value
    elif op == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise KustomizeError(f"JSON 6902 op {op!r} not implemented")


# ------------------------------------------------------------------------------ pod templates


def _pod_specs(resource: Resource) -> Iterator[dict[str, Any]]:
    if resource["kind"] in POD_TEMPLATE_KINDS:
        yield resource["spec"]["template"]["spec"]
    elif resource["kind"] == "CronJob":
        yield resource["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers(resource: Resource) -> Iterator[dict[str, Any]]:
    for pod in _pod_specs(resource):
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for resource in resources:
        for container in _containers(resource):
            name = re.split(r"[@:]", container["image"], maxsplit=1)[0]
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                new += "@" + image["digest"]
            elif "newTag" in image:
                new += ":" + image["newTag"]
            else:
                new = container["image"].replace(name, new, 1)
            container["image"] = new


def _rename_references(resources: list[Resource], generated: dict[tuple[str, str], str]) -> None:
    def rename(kind: str) -> Callable[[dict[str, Any], str], None]:
        def apply(holder: dict[str, Any], key: str) -> None:
            if holder.get(key) is not None and (kind, holder[key]) in generated:
                holder[key] = generated[(kind, holder[key])]

        return apply

    configmap, secret = rename("ConfigMap"), rename("Secret")
    for resource in resources:
        for pod in _pod_specs(resource):
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    configmap(volume["configMap"], "name")
                if "secret" in volume:
                    secret(volume["secret"], "secretName")
                for source in volume.get("projected", {}).get("sources", []):
                    if "configMap" in source:
                        configmap(source["configMap"], "name")
                    if "secret" in source:
                        secret(source["secret"], "name")
            for pull in pod.get("imagePullSecrets", []):
                secret(pull, "name")
        for container in _containers(resource):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    configmap(ref["configMapKeyRef"], "name")
                if "secretKeyRef" in ref:
                    secret(ref["secretKeyRef"], "name")
            for env_from in container.get("envFrom", []):
                if "configMapRef" in env_from:
                    configmap(env_from["configMapRef"], "name")
                if "secretRef" in env_from:
                    secret(env_from["secretRef"], "name")
