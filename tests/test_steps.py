"""Every driver reads the step table (tasks/steps.py), and the CLI and Prefect call one body.

Each test replaces or reads the table where a driver looks it up, so a driver that goes back to a
list of its own fails here; dvc.yaml, which cannot import the table, is checked against it in
tests/test_dvc_deps.py. No test here needs a service.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import flows.pipeline
import flows.steps
import tasks.cli
from flows.steps import OnPrefect
from infra.settings import REPO_ROOT
from tasks.common.driver import Driver, Local
from tasks.params import dumps_resolved, load_params
from tasks.report.ledger import envelope, ledger
from tasks.steps import NAMES, POOLS, PRICED, STEPS, Step, step

# The driver each call of `fake_body` received.
CALLS: list[Any] = []


def fake_body(params: Any, driver: Driver) -> dict[str, Any]:
    CALLS.append(driver)
    return {"ran": True}


def faked(name: str) -> Step:
    """The table's entry for `name` with its body replaced by `fake_body`. The tests run it as
    `train`, which records no attempts of its own here (no S3)."""
    return replace(step(name), body=f"{__name__}:fake_body")


def test_every_body_is_a_function_of_params_and_driver() -> None:
    for entry in STEPS:
        assert list(inspect.signature(entry.load()).parameters) == ["params", "driver"], entry


def test_the_drivers_provide_everything_a_body_may_ask() -> None:
    wanted = {name for name in vars(Driver) if not name.startswith("_")} | set(
        Driver.__annotations__)
    for driver in (Local(), OnPrefect()):
        missing = {name for name in wanted if not hasattr(driver, name)}
        assert not missing, f"{type(driver).__name__} lacks {sorted(missing)}"


def test_the_cli_offers_the_table_steps() -> None:
    assert tasks.cli.COMMANDS == ("check", "plan", *NAMES)


def test_the_cli_runs_the_table_body_with_the_local_driver(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tasks.cli, "step", faked)
    CALLS.clear()
    out = tmp_path / "train.json"
    assert tasks.cli.main(["train", "--out", str(out)]) == 0
    assert [type(d) for d in CALLS] == [Local]
    written = json.loads(out.read_text())
    assert written["step"] == "train" and written["result"] == {"ran": True}


def test_the_cli_dry_run_prints_the_table_sections(capsys) -> None:
    for entry in STEPS:
        assert tasks.cli.main([entry.name, "--dry-run"]) == 0
        shown = capsys.readouterr().out
        top = [line.split(":")[0] for line in shown.splitlines() if line[:1].isalpha()]
        assert top == list(dict.fromkeys(["profile", "storage", "cost", *entry.sections]))


def test_the_step_flow_runs_the_table_body_with_the_prefect_driver(monkeypatch) -> None:
    monkeypatch.setattr(flows.steps, "table_entry", faked)
    written: dict[str, Any] = {}
    monkeypatch.setattr(flows.steps.s3, "put_json", lambda uri, data: written.update({uri: data}))
    CALLS.clear()
    text, sha256 = dumps_resolved(load_params())
    uri = "s3://test/pipeline/train.json"
    assert flows.steps.run_step.fn("train", uri, text, sha256, "parent") == uri
    assert [(type(d), d.parent_run_id) for d in CALLS] == [(OnPrefect, "parent")]
    assert written[uri]["result"] == {"ran": True}


def test_the_step_flow_refuses_the_report() -> None:
    text, sha256 = dumps_resolved(load_params())
    with pytest.raises(ValueError, match="pipeline flow"):
        flows.steps.run_step.fn("report", "s3://test/x.json", text, sha256)


class Started(Exception):
    """Stops run_step_on_pool once it has named the deployment."""


@pytest.mark.parametrize("name", PRICED)
def test_the_pipeline_starts_each_step_on_its_table_pool(monkeypatch, name: str) -> None:
    def run_deployment(deployment: str, **_: Any) -> None:
        raise Started(deployment)

    monkeypatch.setattr(flows.pipeline, "run_deployment", run_deployment)
    with pytest.raises(Started) as started:
        flows.pipeline.run_step_on_pool(name, "s3://test/x.json", load_params(), "parent")
    assert str(started.value) == f"{flows.pipeline.STEP_FLOW}/{step(name).pool}"
    assert step(name).pool in POOLS


def test_the_local_services_serve_every_table_pool() -> None:
    """infra/ imports no task, so its work pools are checked here against the table's."""
    from infra.services import WORK_POOLS

    assert set(POOLS) <= set(WORK_POOLS)


def test_the_ledger_prices_by_the_table() -> None:
    cost = load_params(profile="full").cost
    rows = ledger([envelope(name, {"gpus": 2}, 3600.0) for name in PRICED], cost)
    assert [r.step for r in rows] == list(PRICED)
    for row in rows:
        gpu = step(row.step).gpu
        assert (row.device_type, row.devices) == ((cost.gpu_type, 2) if gpu else ("cpu", 1))
    with pytest.raises(ValueError, match="unknown step"):
        ledger([envelope("upload", {}, 1.0)], cost)


def test_the_report_reads_the_cli_envelopes_of_the_priced_steps(tmp_path) -> None:
    params = load_params()
    params = replace(params, storage=replace(params.storage, out_dir=str(tmp_path)))
    for name in reversed(NAMES):
        (tmp_path / f"{name}.json").write_text(json.dumps(envelope(name, {}, 1.0)))
    assert [e["step"] for e in Local().envelopes(params)] == list(PRICED)


def step_lists(path: Path) -> list[int]:
    """Lines where a literal tuple, list, set or dict names three or more steps."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
            names = {i.value for i in items if isinstance(i, ast.Constant)} & set(NAMES)
            if len(names) >= 3:
                found.append(node.lineno)
    return found


def test_no_driver_writes_its_own_list_of_steps() -> None:
    files = [p for root in ("tasks", "flows", "infra") for p in (REPO_ROOT / root).rglob("*.py")]
    found = {p.relative_to(REPO_ROOT).as_posix(): lines for p in files
             if (lines := step_lists(p))}
    assert not found, f"read tasks/steps.py instead of listing the steps: {found}"


def test_the_list_checker_sees_a_planted_list(tmp_path) -> None:
    planted = tmp_path / "driver.py"
    planted.write_text('GPU = ("caption", "encode", "train")\nONE = ["train"]\n'
                       'POOLS = {"caption": "gpu", "encode": "gpu", "report": "cpu"}\n')
    assert step_lists(planted) == [1, 3]
