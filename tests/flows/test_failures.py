"""A step that fails for an operational reason ends `micro-budget/full` with one line naming
the cause and the fix as the flow run's state message (and the step's), the traceback only in
the step's log; the MLflow parent run still ends FAILED at that step."""

from __future__ import annotations

import uuid

import yaml
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra.settings import REPO_ROOT, mlflow_uri
from tasks.common.errors import one_line
from tasks.common.fetch import FetchError


def _logs(flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def _children(parent_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def test_missing_source_file_ends_the_flow_run_with_one_line(pipeline_services, tmp_path):
    missing = tmp_path / "no-such-dir" / "captions_val2014.json"
    params = tmp_path / "missing-source.yaml"
    params.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "params.yaml"), "profile": "demo", "overrides": {
            "storage": {"raw_prefix": f"test/{uuid.uuid4().hex[:12]}/raw"},
            "download": {"coco": {"annotations": str(missing)}}}}))
    deploy()
    run = run_deployment("micro-budget/full", timeout=600,
                         parameters={"params_path": str(params), "steps": ["download"]})

    assert run.state is not None and run.state.is_failed(), run.state
    step = [child for child in _children(run.id) if child.name == "download"]
    assert len(step) == 1 and step[0].state.is_failed(), step
    line = step[0].state.message  # the CLI's line for the same error: cause, then the fix
    assert line.startswith(f"not_found: {missing}") and "\n" not in line
    assert line.endswith(": check the path in the params file")
    assert line == one_line(FetchError("not_found", line.removeprefix("not_found: ")))
    assert run.state.message == f"step download failed: {line}"
    step_log = "\n".join(_logs(step[0].id))
    assert line in step_log and "Traceback" in step_log and "FetchError" in step_log

    client = MlflowClient(tracking_uri=mlflow_uri())
    experiment = client.get_experiment_by_name("micro-budget").experiment_id
    parent = client.search_runs([experiment], filter_string=(
        f"tags.kind = 'pipeline' and attributes.run_name = 'demo-{run.name}'"))
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert parent[0].data.tags["stopped_at"] == "download"
    assert line in parent[0].data.tags["error"]
