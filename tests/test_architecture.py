"""Architecture rules that keep the layout honest: flows/ composes, model/ is pure torch."""

from __future__ import annotations

import ast
from pathlib import Path

from infra.settings import REPO_ROOT

# model/ never reaches orchestration, storage, tracking or our own I/O layers.
MODEL_FORBIDDEN = {"prefect", "boto3", "botocore", "mlflow", "dvc", "infra", "tasks", "flows"}
# flows/ composes task functions; the maths stays behind tasks/.
FLOWS_FORBIDDEN = {"torch", "model"}


def imported_roots(path: Path) -> set[str]:
    """Top-level packages a file imports anywhere (relative imports stay in their package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def offenders(folder: str, forbidden: set[str]) -> dict[str, list[str]]:
    files = sorted((REPO_ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    found = {f.relative_to(REPO_ROOT).as_posix(): sorted(imported_roots(f) & forbidden)
             for f in files}
    return {name: bad for name, bad in found.items() if bad}


def test_flows_compose_tasks_only() -> None:
    assert not offenders("flows", FLOWS_FORBIDDEN)


def test_model_is_pure_torch() -> None:
    assert not offenders("model", MODEL_FORBIDDEN)


def test_the_rules_see_imports_in_every_form(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("import torch.nn as nn\nfrom .sibling import x\n"
                      "def f():\n    from infra.s3 import client\n")
    assert imported_roots(source) == {"torch", "infra"}
