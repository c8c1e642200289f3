"""pyproject.toml says what the code needs: every third-party import is declared, with a floor that provides it.

The floors themselves are installed and run against the HTTP tests by ``.ci/floors.py`` in CI.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CODE = ("hubtree", "ops", "pipelines", "schemas")  # what `pip install hubtree` ships
OURS = {"hubtree", "ops", "pipelines", "schemas"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def imported_modules() -> set[str]:
    """Top-level modules imported anywhere in the shipped code (lazy imports inside functions included)."""
    found = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - OURS - set(sys.stdlib_module_names)


def test_every_third_party_import_is_a_declared_dependency():
    declared = {_name(r) for r in _project()["dependencies"]}
    declared |= {_name(r) for extra in ("s3",) for r in _project()["optional-dependencies"][extra]}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(imported_modules()):
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_huggingface_hub_floor_brings_the_http_client_the_code_imports():
    """The code imports httpx2, which huggingface_hub depends on from 2.0 (1.x brought httpx)."""
    assert "httpx2" in imported_modules()
    hub = next(Requirement(r) for r in _project()["dependencies"] if _name(r) == "huggingface-hub")
    floor = min(s.version for s in hub.specifier if s.operator == ">=")
    assert int(floor.split(".")[0]) >= 2, f"huggingface_hub>={floor} may bring httpx, not httpx2"
    assert any(_name(r) == "httpx2" for r in requires("huggingface_hub") or [])
