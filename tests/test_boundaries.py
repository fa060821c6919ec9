"""The layering DESIGN.md asks for, checked on the source: who may import whom."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FORBIDDEN = {
    "contracts": {
        "ingress",
        "workers",
        "runtime",
        "payhook",
        "aiohttp",
        "aio_pika",
        "asyncpg",
        "structlog",
    },
    # The shared lower layer: dependencies, lifetime, health. No business logic.
    "runtime": {"ingress", "workers", "payhook"},
    "ingress": {"workers", "payhook", "asyncpg"},
    "workers": {"ingress", "payhook"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_what_it_must_not(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_contracts_exports_what_it_declares() -> None:
    module = importlib.import_module("contracts")
    for name in module.__all__:
        assert hasattr(module, name), name


# Reading the world from contracts: files, the environment, the working directory, sockets.
_IO_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "getenv", "cwd"}
_IO_NAMES = {"environ", "socket", "subprocess"}


def _io_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _IO_CALLS:
                found.append(f"{path.name}:{node.lineno} {name}()")
        elif isinstance(node, ast.Attribute) and node.attr in _IO_NAMES:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            found += [f"{path.name}:{node.lineno} import {m}" for m in modules if m in _IO_NAMES]
    return found


def test_contracts_does_no_io() -> None:
    """contracts parses and describes; the bytes come from its callers (STYLE.md 4.5):
    ``payhook.config_files`` reads the config file, its secret files and the environment."""
    uses = [use for path in sorted((ROOT / "contracts").glob("*.py")) for use in _io_uses(path)]
    assert uses == []
