"""Architecture rules checked on the source: the core never imports the edges, and every module imports."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "trainers", "rewards", "cluster")
EDGE_ONLY = {"ray", "mlflow", "boto3", "botocore", "pyarrow", "pipeline"}  # allowed only in pipeline/


def modules(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", [p for pkg in ("trainers", "rewards") for p in modules(pkg)], ids=str)
def test_core_does_not_import_edges(path):
    rel = str(path.relative_to(ROOT))
    forbidden = imported_roots(path) & EDGE_ONLY
    assert not forbidden, f"{rel} imports {sorted(forbidden)}; keep Ray/MLflow/boto3 and pipeline/ at the edges"


@pytest.mark.parametrize("path", [p for pkg in PACKAGES for p in modules(pkg)], ids=str)
def test_every_module_imports(path):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    importlib.import_module(name)
