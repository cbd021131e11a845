"""Architecture rules checked on the source: the core never imports the edges, imports point down the rooms, and
every module imports."""

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


# The rooms and what each may import: every arrow points down. Samplers and rewards are the ground floor
# (they import nothing else of the project), the training core stands on them, the edges (Ray, MLflow, CLIs) on
# the core, the benches and the toy world on the edges; the cluster launcher imports only Ray's start-up helpers.
_CORE = {"rewards", "trainers.samplers", "trainers"}
ALLOWED: dict[str, set[str]] = {
    "rewards": {"rewards"},
    "trainers.samplers": {"trainers.samplers"},
    "trainers": _CORE,
    "pipeline": _CORE | {"pipeline"},
    "pipeline.bench": _CORE | {"pipeline", "pipeline.bench"},
    "pipeline.toyworld": _CORE | {"pipeline", "pipeline.bench", "pipeline.toyworld"},
    "cluster": {"cluster", "pipeline.ray_env"},  # a module, not the pipeline room
}


def room(module: str) -> str:
    parts = module.split(".")
    if parts[:2] in (["trainers", "samplers"], ["pipeline", "bench"], ["pipeline", "toyworld"]):
        return ".".join(parts[:2])
    return parts[0]


def project_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("path", [p for pkg in PACKAGES for p in modules(pkg)], ids=str)
def test_imports_point_down_the_rooms(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    home, allowed = room(module), ALLOWED[room(module)]
    upward = sorted(name for name in project_imports(path) if room(name) not in allowed and name not in allowed)
    assert not upward, f"{module} (room {home}) imports {upward}; it may import only {sorted(ALLOWED[home])}"


@pytest.mark.parametrize("path", [p for pkg in PACKAGES for p in modules(pkg)], ids=str)
def test_every_module_imports(path):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    importlib.import_module(name)


def test_the_scoring_and_sampling_commands_never_import_the_training_loop(tiny_sd_dir, tmp_path):
    """``pipeline.generate``, ``pipeline.evaluate`` and ``pipeline.score`` score and sample through
    ``trainers.evaluation``: run in a fresh interpreter, none of them loads ``trainers.loop``."""
    import subprocess
    import sys

    script = f"""
import sys
from pipeline import evaluate, generate, score
assert generate.main(["--model", {tiny_sd_dir!r}, "--prompt", "a red circle", "--num-images", "2", "--steps", "2",
                      "--device", "cpu", "--out", {str(tmp_path / "gen")!r}]) == 0
assert evaluate.main([f"model.path={tiny_sd_dir}", "model.device=cpu", "sampler.num_steps=2", "eval.max_prompts=1",
                      "eval.images_per_prompt=2", "rewards=[{{name: brightness}}]"]) == 0
assert score.main(["--reward", "brightness", "--prompt", "x", {str(tmp_path / "gen" / "grid.png")!r}]) == 0
loaded = sorted(m for m in sys.modules if m.startswith("trainers."))
assert "trainers.loop" not in loaded and "trainers.objectives" not in loaded, loaded
assert "trainers.evaluation" in loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _text_files() -> list[pathlib.Path]:
    files = [
        p
        for pkg in (*PACKAGES, "tests", "scripts", "docs")
        for p in (ROOT / pkg).rglob("*")
        if p.suffix in (".py", ".md", ".yaml", ".sh") and ".venv" not in p.parts
    ]
    return files + [ROOT / "README.md", ROOT / "pyproject.toml"]


def test_every_cited_doc_exists():
    """Docstrings, comments and pages cite ``docs/<page>.md``, a recipe ``pipeline/configs/<name>.yaml`` or an
    upper-case page such as the README: each must be a file of the repository; markdown links in the README and docs/ must point at files that exist."""
    import re

    missing = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        cited_files = re.findall(r"\bdocs/[\w./-]+\.(?:md|png|json)|\bpipeline/configs/\w+\.yaml", text)
        for cited in set(cited_files):
            if not (ROOT / cited).exists():
                missing.append(f"{path.relative_to(ROOT)}: {cited}")
        for name in set(re.findall(r"\b[A-Z][A-Z_]+\.md\b", text)):
            if not any(p.name == name for p in _text_files()):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
        if path.suffix == ".md":
            for link in set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)):
                if "://" not in link and not (path.parent / link).exists():
                    missing.append(f"{path.relative_to(ROOT)}: link {link}")
    assert not missing, missing
