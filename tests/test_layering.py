"""Import arrows between packages: api -> core; worker -> core, models; models -> no I/O.

Every module's imports are read with ast (including imports inside functions), so a lazy import
breaks the rule as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "api", "worker", "models", "migrations", "cli", "client")

# For each package, the top-level modules it must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "api": frozenset({"worker", "models", "torch", "cli"}),
    "core": frozenset({"api", "worker", "models", "cli", "torch"}),
    "worker": frozenset({"api", "cli"}),
    "models": frozenset(
        {"core", "api", "worker", "cli", "boto3", "sqlalchemy", "celery", "fastapi", "structlog"}
    ),
    "migrations": frozenset({"api", "worker", "models", "cli"}),
    "client": frozenset({"api", "worker", "models", "torch"}),
}


def imported_modules(path: Path) -> set[str]:
    """Return the top-level names of every module that the file imports, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(package: str) -> list[str]:
    found = []
    for path in package_modules(package):
        for name in sorted(imported_modules(path) & FORBIDDEN[package]):
            found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_arrows(package: str) -> None:
    assert violations(package) == []


def test_every_package_is_checked() -> None:
    """A new top-level package must get its own rule here."""
    assert set(FORBIDDEN) | {"cli"} == set(PACKAGES)


def test_imported_modules_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def load():\n    import torch\n    from models.engine import Engine\n")

    assert imported_modules(module) == {"torch", "models"}
