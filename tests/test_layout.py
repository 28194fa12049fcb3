"""Layout rules of the design card."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_calibration_core_never_imports_dagster():
    offenders = []
    for path in sorted((ROOT / "calibration_core").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in {"dagster", "dagster_pipes"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, offenders


def test_top_level_names_exist():
    for name in ["pyproject.toml", "workspace.yaml", "definitions.py", "calibration_core",
                 "assets", "resources", "jobs", "sensors", "tests"]:
        assert (ROOT / name).exists(), name
