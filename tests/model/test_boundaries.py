"""model/ stays pure torch: no orchestration, storage, tracking or infra imports."""

from __future__ import annotations

import ast
from pathlib import Path

from infra.settings import REPO_ROOT

FORBIDDEN = {"prefect", "boto3", "botocore", "mlflow", "infra", "tasks", "flows", "dvc"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_model_imports_no_orchestration_or_io_stack() -> None:
    files = sorted((Path(REPO_ROOT) / "model").glob("*.py"))
    assert len(files) >= 10
    offenders = {f.name: sorted(imported_roots(f) & FORBIDDEN) for f in files}
    assert not {name: bad for name, bad in offenders.items() if bad}
