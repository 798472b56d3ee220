"""Architecture rules that keep the layout honest: flows/ composes, model/ is pure torch, steps
stand on a shared floor and never on each other, infra/ imports no task (style.md, 10)."""

from __future__ import annotations

import ast
from pathlib import Path

from infra.settings import REPO_ROOT
# The file a module name resolves to, as the DVC-deps import graph reads it.
from tests.test_dvc_deps import module_file

# model/ never reaches orchestration, storage, tracking or our own I/O layers.
MODEL_FORBIDDEN = {"prefect", "boto3", "botocore", "mlflow", "dvc", "infra", "tasks", "flows"}
# flows/ composes task functions; the maths stays behind tasks/.
FLOWS_FORBIDDEN = {"torch", "model"}
# infra/ knows the services; the steps stand on it, never the other way round.
INFRA_FORBIDDEN = {"tasks", "flows"}
# demo/ is the demo corpus's vocabulary, read by infra/mirror and by the steps alike.
DEMO_FORBIDDEN = {"tasks", "flows", "infra", "model"}
# The floor under the steps: tasks/common, and tasks/export, which stays at its path because
# every exported model_index.json names tasks.export.pipeline as its classes' module.
FLOOR = ("common", "export")
# What one step may import of another: its data contract, the module that says where the
# step's outputs are found (tasks/<step>/keys.py).
CONTRACTS = {"keys"}


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


def imported_modules(path: Path, root: Path) -> set[str]:
    """Dotted names a file imports anywhere: `from a import b` is a.b when b is a module of a,
    else a; relative imports are resolved against the file's package."""
    package = path.relative_to(root).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            anchor = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(sub, root) is not None else base)
    return found


def step_folders(root: Path) -> set[str]:
    return {p.name for p in (root / "tasks").iterdir() if (p / "__init__.py").is_file()}


def crossings(root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Imports of one tasks/ folder from another that the floor rule forbids: a step imports
    only the floor and other steps' CONTRACTS; tasks/export imports no step; tasks/common
    imports nothing of tasks/ but itself."""
    folders = step_folders(root)
    found = {}
    for own in sorted(folders):
        for path in sorted((root / "tasks" / own).rglob("*.py")):
            bad = []
            for module in imported_modules(path, root):
                parts = module.split(".")
                if parts[0] != "tasks" or len(parts) < 2 or parts[1] not in folders - {own}:
                    continue
                other = parts[1]
                if own == "common":
                    bad.append(module)
                elif other in FLOOR:
                    continue
                elif own in FLOOR or len(parts) != 3 or parts[2] not in CONTRACTS:
                    bad.append(module)
            if bad:
                found[path.relative_to(root).as_posix()] = sorted(bad)
    return found


def test_steps_stand_on_the_floor_not_on_each_other() -> None:
    assert not crossings(), "move what two steps share under tasks/common (or into a keys.py)"


def test_infra_imports_no_task() -> None:
    assert not offenders("infra", INFRA_FORBIDDEN)


def test_demo_vocabulary_imports_nothing_of_ours() -> None:
    assert not offenders("demo", DEMO_FORBIDDEN)


def test_the_floor_rule_sees_a_planted_crossing(tmp_path: Path) -> None:
    files = {
        "tasks/a/__init__.py": "",
        "tasks/a/run.py": ("from tasks.b import keys\nfrom tasks.common.x import f\n"
                           "from tasks.export.y import g\n"
                           "def h():\n    from tasks.b.step import run\n"),
        "tasks/b/__init__.py": "",
        "tasks/b/keys.py": "",
        "tasks/b/step.py": "from ..a import run\nimport tasks.b.keys\n",
        "tasks/common/__init__.py": "",
        "tasks/common/x.py": "from tasks.params import Params\nfrom tasks.b.keys import k\n",
        "tasks/export/__init__.py": "",
        "tasks/export/y.py": "from tasks.common import x\nfrom tasks.a.keys import k\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert crossings(tmp_path) == {"tasks/a/run.py": ["tasks.b.step"],
                                   "tasks/b/step.py": ["tasks.a.run"],
                                   "tasks/common/x.py": ["tasks.b.keys"],
                                   "tasks/export/y.py": ["tasks.a.keys"]}


def test_flows_compose_tasks_only() -> None:
    assert not offenders("flows", FLOWS_FORBIDDEN)


def test_model_is_pure_torch() -> None:
    assert not offenders("model", MODEL_FORBIDDEN)


def test_the_rules_see_imports_in_every_form(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("import torch.nn as nn\nfrom .sibling import x\n"
                      "def f():\n    from infra.s3 import client\n")
    assert imported_roots(source) == {"torch", "infra"}
