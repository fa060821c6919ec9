"""deploy/Dockerfile: lints clean, has the promised shape, and its install steps really work.

There is no Docker engine where the tests run, so the image itself is not built. Instead
``test_install_steps`` lays out the build context the way Docker would (only what
.dockerignore lets through), runs deploy/docker/install.sh, the very script the Dockerfile's
RUN lines call, into a fresh virtualenv, and runs ``payhook --help`` from it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .helpers import REPO, help_commands

DOCKERFILE = REPO / "deploy" / "Dockerfile"
INSTALL_SCRIPT = "deploy/docker/install.sh"


def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages() -> list[list[dockerfile.Command]]:
    out: list[list[dockerfile.Command]] = []
    for command in instructions():
        if command.cmd == "FROM":
            out.append([])
        out[-1].append(command)
    return out


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_runtime_stage() -> None:
    build, runtime = stages()
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage[0].value[0])
    by_cmd = {c.cmd: c for c in runtime}
    # Non-root, by number (Kubernetes' runAsNonRoot cannot check a name).
    user = by_cmd["USER"].value[0]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user
    assert by_cmd["ENTRYPOINT"].json, "exec form: payhook is PID 1 and gets SIGTERM"
    assert by_cmd["ENTRYPOINT"].value == ("payhook",)
    env = dict(zip(by_cmd["ENV"].value[::2], by_cmd["ENV"].value[1::2], strict=True))
    assert env["PAYHOOK_HEALTH_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
    assert env["PATH"].startswith("/opt/venv/bin:")
    # The runtime stage takes the virtualenv only, never the source tree.
    copies = [c for c in runtime if c.cmd == "COPY"]
    assert [(c.flags, c.value) for c in copies] == [(("--from=build",), ("/opt/venv", "/opt/venv"))]

    healthcheck = by_cmd["HEALTHCHECK"]
    assert healthcheck.value[:2] == ("CMD", "python")
    probe = healthcheck.value[-1]
    for needed in ("urllib.request", "/healthz", "PAYHOOK_HEALTH_PORT"):
        assert needed in probe


def test_build_stage_runs_the_install_script() -> None:
    build, _ = stages()
    runs = [c.value[0] for c in build if c.cmd == "RUN"]
    script = Path(INSTALL_SCRIPT).name
    assert runs == [f"sh {script} deps /opt/venv /src", f"sh {script} project /opt/venv /src"]


def _copied_sources() -> list[str]:
    sources = []
    for command in instructions():
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            sources += command.value[:-1]
    return sources


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exclude?, regex) rules; the last matching rule wins, as in Docker."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern):
            if part == "**/":
                regex += "(?:.*/)?"
            elif part == "**":
                regex += ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            elif part.startswith("["):
                regex += part
            else:
                regex += re.escape(part)
        rules.append((not negate, re.compile(regex)))
    return rules


def in_context(relative: str) -> bool:
    """Whether Docker sends ``relative`` (a path from the repo root) with the build context."""
    parts = relative.split("/")
    excluded = False
    for exclude, regex in _dockerignore_rules():
        # A pattern matching a parent folder matches everything inside it.
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = exclude
    return not excluded


def build_context(destination: Path) -> None:
    for source in _copied_sources():
        path = REPO / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if in_context(relative):
                (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, destination / relative)


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else() -> None:
    for source in _copied_sources():
        assert in_context(source), f"{source} is copied but .dockerignore leaves it out"
    for private in [
        ".venv/bin/python",
        ".local/pg/x",
        "deploy/dev-secrets/admin-token",
        ".git/config",
        "tests/conftest.py",
        "payhook/__pycache__/cli.cpython-311.pyc",
    ]:
        assert not in_context(private), private
    assert in_context("workers/migrations/010_ledger_payments.sql")


def _pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """Package -> (pinned version, number of hashes) in a pip-compile --generate-hashes lock."""
    pins: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=\S)", lock.read_text()):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            hashes = len(re.findall(r"--hash=sha256:[0-9a-f]{64}", block))
            pins[canonicalize_name(match.group(1))] = (Version(match.group(2)), hashes)
    return pins


def test_locks_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    environment = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux"}
    for lock, requirements in [
        ("requirements.lock", project["project"]["dependencies"]),
        ("requirements-build.lock", project["build-system"]["requires"]),
    ]:
        pins = _pins(REPO / lock)
        assert pins, lock
        assert all(count > 0 for _, count in pins.values()), f"{lock}: a pin without hashes"
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{lock} lacks {name}: run scripts/lock"
            version = pins[name][0]
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock}: {name}=={version} does not satisfy {requirement}: run scripts/lock"
            )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_install_steps(tmp_path: Path) -> None:
    """Run the Dockerfile's install steps in a fresh virtualenv; the pip cache keeps it fast."""
    context = tmp_path / "context"
    build_context(context)
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("VIRTUAL_ENV", None)
    for step in ("deps", "project"):
        out = subprocess.run(
            ["sh", str(context / INSTALL_SCRIPT), step, str(venv), str(context)],
            capture_output=True,
            text=True,
            timeout=540,
            env=env,
            check=False,
        )
        assert out.returncode == 0, (
            f"install.sh {step}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )

    help_text = subprocess.run(
        [str(venv / "bin" / "payhook"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for command in help_commands()[()]:
        assert re.search(rf"^    {command}\b", help_text, flags=re.MULTILINE), command
    # Package data made it into the wheel: migrations, event schemas, Paysera's key.
    probe = (
        "from workers.db import migration_files; import contracts, ingress.providers, pathlib;"
        "assert migration_files();"
        "assert list((pathlib.Path(contracts.__file__).parent / 'schemas').glob('*.json'));"
        "assert list(pathlib.Path(ingress.providers.__file__).parent.glob('*.pem'))"
    )
    subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=True, timeout=60)
