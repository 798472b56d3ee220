"""dvc.yaml holds the step table's stages, and their code dependencies cover every project module
that each stage's command imports.

dvc.yaml cannot import Python, so its stages are checked against the step table (tasks/steps.py):
one stage per step in table order, each running `python -m tasks <step>` and depending on the
table's params sections under both profiles.

A stage `python -m tasks <step>` runs tasks/__main__.py, which imports tasks/cli.py, which imports
the step's body module (the table's `body`) by name. From those entry modules the project's import graph (flows/, tasks/,
model/, infra/, demo/) is followed transitively: `import a.b`, `from a import b` (b a submodule or a
name), relative imports, imports inside functions, the packages' __init__.py files that Python
runs on the way, and modules started as subprocesses (`-m tasks.train.launch`, a string constant
naming a project module). A stage whose `deps` miss one of those files would stay "up to date"
in `dvc repro` after that file changed, so the test fails and names the file and who imports it.
A folder in `deps` covers every file below it. The one exception is the body of a function that
no stage runs (NOT_RUN_BY_STAGES: the `check` command's preflight), and a test pins that.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import yaml

from infra.settings import REPO_ROOT
from tasks.steps import NAMES, STEPS

PROJECT_ROOTS = ("flows", "tasks", "model", "infra", "demo")
# (module, function) whose body no stage command executes, so its imports are not followed. Only
# the body is exempt: the same import at module level, or in another function, still counts.
NOT_RUN_BY_STAGES = {
    ("tasks.cli", "check"): "the preflight, run by `python -m tasks check`; no stage runs it",
    ("tasks.cli", "plan_command"): "the cost plan, run by `python -m tasks plan`; no stage "
                                   "runs it",
}
# The command under which main() may call each exempt function of tasks.cli.
EXEMPT_COMMANDS = {"check": "check", "plan_command": "plan"}
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# The module each step's command imports by name: the table's body module.
BODY_MODULES = {s.name: s.module for s in STEPS}


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The project file that `module` names (a module or a package's __init__.py), or None."""
    if module.split(".")[0] not in PROJECT_ROOTS:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def with_packages(module: str, root: Path = REPO_ROOT) -> list[str]:
    """`a.b.c` -> the modules Python executes to import it: a, a.b, a.b.c (project files only)."""
    parts = module.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [name for name in names if module_file(name, root) is not None]


def nodes(tree: ast.AST, module: str) -> Iterator[ast.AST]:
    """Every node of a module, except the bodies of the functions NOT_RUN_BY_STAGES names."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and (module, node.name) in NOT_RUN_BY_STAGES):
            todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, module: str, root: Path = REPO_ROOT) -> set[str]:
    """Project modules that the file of `module` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes(ast.parse(path.read_text(), filename=str(path)), module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(with_packages(alias.name, root))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.update(with_packages(base, root))
            for alias in node.names:  # `from pkg import submodule`
                if module_file(f"{base}.{alias.name}", root) is not None:
                    found.update(with_packages(f"{base}.{alias.name}", root))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and MODULE_NAME.match(node.value) and "." in node.value
              and module_file(node.value, root) is not None):
            found.update(with_packages(node.value, root))  # e.g. ["-m", "tasks.train.launch"]
    found.discard(module)
    return found


def import_closure(entries: Iterable[str], root: Path = REPO_ROOT) -> dict[str, str | None]:
    """Every project module reachable from `entries`, mapped to a module that imports it."""
    parent: dict[str, str | None] = {}
    todo: deque[str] = deque()
    for entry in entries:
        for name in with_packages(entry, root):
            if name not in parent:
                parent[name] = None
                todo.append(name)
    while todo:
        module = todo.popleft()  # breadth first: the reported chains are the shortest
        path = module_file(module, root)
        assert path is not None, module
        for child in sorted(imported_modules(path, module, root)):
            if child not in parent:
                parent[child] = module
                todo.append(child)
    return parent


def entry_modules(cmd: str, bodies: Mapping[str, str] = BODY_MODULES) -> list[str]:
    """The modules a stage command runs: `python -m tasks <step>` -> tasks.__main__ + the
    step's body module."""
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "tasks"] and len(argv) > 3, (
        f"unexpected stage command {cmd!r}: teach tests/test_dvc_deps.py its entry modules")
    # tasks/cli.py imports the body with importlib, which no import statement shows; the table
    # names it as "module:function", which the graph does not follow (a stage runs one body).
    return ["tasks.__main__", bodies[argv[3]]]


def relative(module: str, root: Path = REPO_ROOT) -> str:
    path = module_file(module, root)
    assert path is not None, module
    return path.relative_to(root).as_posix()


def covered(file: str, deps: Iterable[str]) -> bool:
    """A dep names the file itself or a folder above it."""
    return any(file == dep or file.startswith(dep + "/") for dep in
               (d.rstrip("/") for d in deps))


def missing_deps(cmd: str, deps: Iterable[str], root: Path = REPO_ROOT,
                 bodies: Mapping[str, str] = BODY_MODULES) -> dict[str, str]:
    """Imported project files that `deps` do not cover, each with the chain that imports it."""
    deps = [str(d) for d in deps]
    parent = import_closure(entry_modules(cmd, bodies), root)
    missing = {}
    for module in sorted(parent):
        file = relative(module, root)
        if covered(file, deps):
            continue
        chain, up = [module], parent[module]
        while up is not None:
            chain.append(up)
            up = parent[up]
        missing[file] = ("imported via " + " -> ".join(reversed(chain)) if len(chain) > 1
                         else "run by the stage command")
    return missing


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def describe(stage: str, missing: dict[str, str]) -> str:
    lines = [f"dvc.yaml stage {stage!r}: deps miss {len(missing)} imported project file(s):"]
    lines += [f"  {file}  ({chain})" for file, chain in missing.items()]
    return "\n".join(lines)


def _profiles() -> dict:
    data = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return {name: block or {} for name, block in data.items() if name != "profile"}


def base_profiles() -> list[str]:
    """The profiles that state every section: DVC tracks each of their sections."""
    return [name for name, block in _profiles().items() if "extends" not in block]


def variant_profiles() -> list[str]:
    """Profiles that extend another and state only what they change: tracked as one block."""
    return [name for name, block in _profiles().items() if "extends" in block]


def test_the_stages_are_the_step_table() -> None:
    """Stage names and order, commands and params deps as the table declares them."""
    assert list(stages()) == list(NAMES)
    for entry in STEPS:
        stage = stages()[entry.name]
        assert stage["cmd"] == f"python -m tasks {entry.name} --out out/{entry.name}.json"
        assert stage["params"] == ["profile", *(f"{profile}.{section}"
                                                for section in entry.sections
                                                for profile in base_profiles()),
                                   *variant_profiles()], entry.name


def test_every_stage_depends_on_the_code_it_imports() -> None:
    problems = {name: missing_deps(stage["cmd"], stage["deps"])
                for name, stage in stages().items()}
    report = "\n".join(describe(name, m) for name, m in problems.items() if m)
    assert not report, "add these paths (or a folder above them) to the stage's deps:\n" + report


def test_every_dep_path_exists() -> None:
    for name, stage in stages().items():
        for dep in stage["deps"]:
            assert (REPO_ROOT / dep).exists() or dep.startswith("out/"), (
                f"dvc.yaml stage {name!r}: dep {dep} does not exist")


def test_exempt_functions_exist_and_run_only_for_their_command() -> None:
    """Each cli exemption holds only while main() calls the function for its command alone."""
    for module, function in NOT_RUN_BY_STAGES:
        tree = ast.parse(module_file(module).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == function for n in tree.body), (
            f"{module}.{function} is gone: remove it from NOT_RUN_BY_STAGES")
    main = next(n for n in ast.parse(module_file("tasks.cli").read_text()).body
                if isinstance(n, ast.FunctionDef) and n.name == "main")
    for function, command in EXEMPT_COMMANDS.items():
        calls = [n for n in ast.walk(main) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == function]
        guarded = [c for n in ast.walk(main) if isinstance(n, ast.If)
                   and ast.unparse(n.test) == f"args.step == '{command}'"
                   for c in ast.walk(n) if c in calls]
        assert calls and len(guarded) == len(calls), (
            f"tasks/cli.py main() calls {function}() outside `if args.step == '{command}'`: "
            "a stage may run it")


def test_the_checker_reports_a_dropped_folder() -> None:
    """Drop tasks/common from the encode stage's deps: the checker names the files under it."""
    encode = stages()["encode"]
    assert "tasks/common" in encode["deps"]
    before = missing_deps(encode["cmd"], encode["deps"])  # empty unless dvc.yaml drifted already
    drifted = [dep for dep in encode["deps"] if dep != "tasks/common"]
    missing = missing_deps(encode["cmd"], drifted)
    new = set(missing) - set(before)
    assert "tasks/common/shards.py" in new
    assert all(file.startswith("tasks/common/") for file in new), new
    assert "tasks/common/shards.py  (imported via " in describe("encode", missing)


def test_the_import_graph_follows_every_import_form(tmp_path: Path) -> None:
    """A throwaway project: function-level, relative, `from pkg import module`, `-m` strings."""
    files = {
        "tasks/__init__.py": "",
        "tasks/__main__.py": "from tasks.cli import main\n",
        "tasks/cli.py": ("def main():\n    from infra import settings\n"
                         "def check():\n    import tasks.check\n"),  # exempt body
        "tasks/check.py": "",
        "tasks/demo/__init__.py": "",
        "tasks/demo/step.py": "from . import helper\nimport model.net\n",
        "tasks/demo/helper.py": "from ..common.util import f\nARGS = ['-m', 'tasks.demo.launch']\n",
        "tasks/demo/launch.py": "import torch\n",
        "tasks/common/__init__.py": "",
        "tasks/common/util.py": "def f():\n    import os\n",
        "tasks/unused.py": "",
        "infra/__init__.py": "",
        "infra/settings.py": "",
        "model/__init__.py": "from model.layers import Block\n",
        "model/layers.py": "",
        "model/net.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    bodies = {"demo": "tasks.demo.step"}
    closure = {relative(m, tmp_path) for m in
               import_closure(entry_modules("python -m tasks demo --out x", bodies), tmp_path)}
    assert closure == set(files) - {"tasks/unused.py", "tasks/check.py"}
    missing = missing_deps("python -m tasks demo", ["tasks", "infra/settings.py"], tmp_path,
                           bodies)
    assert set(missing) == {"infra/__init__.py", "model/__init__.py", "model/layers.py",
                            "model/net.py"}
    assert missing["model/layers.py"] == "imported via tasks.demo.step -> model -> model.layers"
