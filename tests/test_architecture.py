"""Architecture rules that keep the layout honest."""

from __future__ import annotations

import ast
from pathlib import Path

from infra.settings import REPO_ROOT


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_flows_compose_tasks_only():
    for path in (REPO_ROOT / "flows").rglob("*.py"):
        assert not {"torch", "model"} & _imports(path), f"{path} imports torch or model/"


def test_model_is_pure_torch():
    banned = {"prefect", "boto3", "mlflow", "infra", "tasks", "flows"}
    for path in (REPO_ROOT / "model").rglob("*.py"):
        assert not banned & _imports(path), f"{path} imports I/O or orchestration"
