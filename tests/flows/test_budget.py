"""A run whose plan exceeds cost.budget_usd is refused before any step starts; its MLflow
parent run ends FAILED with the plan, and allow_over_budget lets the same run through."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra.settings import mlflow_uri


def _pipeline_runs(client: MlflowClient, name: str):
    return client.search_runs(
        [client.get_experiment_by_name("micro-budget").experiment_id],
        filter_string=f"tags.kind = 'pipeline' and attributes.run_name = '{name}'")


def test_over_budget_run_is_refused_and_recorded(quick_params, tmp_path):
    # The session's demo corpus: the allowed download finds every shard committed.
    path = quick_params({"cost": {"budget_usd": 1.0e-9}}, name="tight")
    deploy()
    refused = run_deployment("micro-budget/full", timeout=300,
                             parameters={"params_path": str(path),
                                         "steps": ["download"]})
    assert refused.state is not None and refused.state.is_failed(), refused.state
    client = MlflowClient(tracking_uri=mlflow_uri())
    runs = _pipeline_runs(client, f"demo-{refused.name}")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED" and run.data.tags["stopped_at"] == "budget"
    assert "over cost.budget_usd $0.00" in run.data.tags["error"]
    error = client.download_artifacts(run.info.run_id, "report/error.txt", str(tmp_path))
    assert "train     stage1" in open(error).read()  # the plan is in the record

    allowed = run_deployment("micro-budget/full", timeout=600,
                             parameters={"params_path": str(path), "steps": ["download"],
                                         "allow_over_budget": True})
    assert allowed.state is not None and allowed.state.is_completed(), allowed.state
    run = _pipeline_runs(client, f"demo-{allowed.name}")[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["planned_cost_usd"] > 1.0e-9
