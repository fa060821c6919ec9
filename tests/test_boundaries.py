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
