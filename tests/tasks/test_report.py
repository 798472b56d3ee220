"""The report prices every step and lands a parent run with nested step runs in MLflow."""

from __future__ import annotations

import base64
import io
import os
import urllib.request

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from infra.tracking import experiment_id
from tasks.common.cost import CostParams
from tasks.params import load_params
from tasks.report.ledger import envelope, ledger, totals
from tasks.report.step import report
from tasks.report.tracking import start_pipeline_run


def test_ledger_prices_gpu_steps_at_the_gpu_rate():
    cost = CostParams(gpu_type="H100", usd_per_gpu_hour={"cpu": 0.1, "H100": 3.75})
    rows = ledger([envelope("download", {}, 3600.0),
                   envelope("train", {"gpus": 8, "gpu_seconds_per_device": 1800.0}, 1900.0),
                   envelope("encode", {}, 7200.0)], cost)
    by = {r.step: r for r in rows}
    assert by["download"].device_type == "cpu" and abs(by["download"].cost_usd - 0.1) < 1e-9
    # 8 GPUs x 0.5 h x $3.75 = $15: the trainer's own GPU-seconds win over wall time.
    assert by["train"].device_hours == 4.0 and abs(by["train"].cost_usd - 15.0) < 1e-9
    assert abs(by["encode"].cost_usd - 7.5) < 1e-9
    assert abs(totals(rows)["cost_usd"] - 22.6) < 1e-9


def _evaluation_run_with_grid(client: MlflowClient, tmp_path) -> tuple[str, bytes]:
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 40, 40)).save(buf, "PNG")
    folder = tmp_path / "grid"
    folder.mkdir()
    (folder / "samples_grid.png").write_bytes(buf.getvalue())
    run = client.create_run(experiment_id(client), run_name="test-eval")
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="eval/abc123")
    client.set_terminated(run.info.run_id)
    return run.info.run_id, buf.getvalue()


def test_report_logs_parent_and_nested_runs(mlflow_service, tmp_path):
    params = load_params(profile="demo")
    eval_run, grid = _evaluation_run_with_grid(MlflowClient(mlflow_service), tmp_path)
    envelopes = [envelope("download", {"cc3m": {"samples": 5, "attempted": 6, "succeeded": 5,
                                                "success_rate": 5 / 6,
                                                "failed": {"http_404": 1}}}, 12.0),
                 envelope("evaluate", {"fid": 123.4, "protocol": {"num_samples": 8,
                                                                  "resolution": 64},
                                       "mlflow_run_id": eval_run, "protocol_hash": "abc123"},
                          30.0)]
    parent = start_pipeline_run(params, "test-report")
    result = report(params, envelopes, parent)
    client = MlflowClient(mlflow_service)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["fid_n8_64px"] == 123.4
    # Demo prices every step at the cpu rate: 12 s + 30 s of one machine.
    rate = params.cost.usd_per_gpu_hour["cpu"]
    assert rate > 0
    assert run.data.metrics["cost_usd"] == pytest.approx(42 / 3600 * rate, rel=1e-9)
    assert run.data.metrics["cost_usd/download"] == pytest.approx(12 / 3600 * rate, rel=1e-9)
    # No attempts recorded for these steps: the model cost what this run spent.
    assert run.data.metrics["model_cost_usd"] == pytest.approx(run.data.metrics["cost_usd"])
    assert "This run spent $" in result["markdown"] and "the model cost $" in result["markdown"]
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(c.data.tags["step"] for c in children) == ["download", "evaluate"]
    assert "| cc3m | 5 | 6 | 5 | 83.3% | http_404 (1) |" in result["markdown"]
    artifacts = [a.path for a in client.list_artifacts(parent, "report")]
    assert "report/cost_table.json" in artifacts and "report/report.md" in artifacts
    # The report embeds the sample grid through a link the tracking server answers.
    assert f"]({result['grid_url']})" in result["markdown"]
    # The server asks for credentials, as a browser's user gives them.
    login = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ['MLFLOW_TRACKING_PASSWORD']}"
    request = urllib.request.Request(result["grid_url"], headers={
        "Authorization": "Basic " + base64.b64encode(login.encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.read() == grid


def test_a_superseded_attempt_stays_killed_when_its_driver_gives_up_late(mlflow_service):
    # A driver that outlives its worker can only give up after a later attempt has marked its
    # run KILLED; it must not turn that record into FAILED with a later step.
    from tasks.report.tracking import fail_pipeline_run, supersede_stale_runs

    params = load_params(profile="demo")
    client = MlflowClient(mlflow_service)
    first = start_pipeline_run(params, "attempt-1")
    second = start_pipeline_run(params, "attempt-2")
    assert first in [r["run_id"] for r in supersede_stale_runs(params, second)]
    assert client.get_run(first).info.status == "KILLED"
    fail_pipeline_run(first, "train", "worker vanished")
    late = client.get_run(first)
    assert late.info.status == "KILLED" and late.data.tags["stopped_at"] == "start"
    # A run nobody superseded still ends FAILED at the step that stopped it.
    fail_pipeline_run(second, "encode", "bad shard")
    failed = client.get_run(second)
    assert failed.info.status == "FAILED" and failed.data.tags["stopped_at"] == "encode"


def _finished_demo_run_with_prompt_following() -> str:
    """A demo parent run closed by the report step, its evaluation scored; returns its id."""
    from demo.attributes import chance

    params = load_params(profile="demo")
    scores = {"n": 35, "shape": 0.857, "color": 1.0, "position": 1.0, "all": 0.857}
    following = {"seen": scores, "held_out": {**scores, "n": 13, "all": 0.615},
                 "chance": chance()}
    envelopes = [envelope("evaluate", {"fid": 237.9, "prompt_following": following,
                                       "protocol": {"num_samples": 48, "resolution": 64}},
                          30.0)]
    parent = start_pipeline_run(params, "test-latest")
    report(params, envelopes, parent)
    return parent


def test_the_latest_finished_run_prints_its_prompt_following_and_link(mlflow_service):
    # What `make demo` prints at its end: read back from the parent run the report closed.
    from tasks.report.latest import latest_pipeline_run, summary

    parent = _finished_demo_run_with_prompt_following()
    client = MlflowClient(mlflow_service)
    run = latest_pipeline_run(client, "demo")
    assert run is not None and run.info.run_id == parent
    text = summary(client, run)
    assert "| seen pairs | 35 | 85.7% | 100.0% | 100.0% | 85.7% |" in text
    assert "| held-out pairs | 13 |" in text and "| chance | | 33.3% | 25.0% | 25.0% | 2.1% |" in text
    assert parent in text and "cost: this run $" in text and "the model $" in text
    assert latest_pipeline_run(client, "no-such-profile") is None


def test_a_report_section_stops_at_the_next_heading_and_drops_images():
    from tasks.report.latest import section

    markdown = "# r\n\n### Prompt following\n\n| a |\n![grid](x.png)\n## Training\n\nmore"
    assert section(markdown, "### Prompt following") == "### Prompt following\n\n| a |"
    assert section(markdown, "## FID against images seen") == ""


def test_latest_reads_the_profile_params_yaml_selects_and_fails_clearly_without_a_run(
        mlflow_service, capsys):
    from tasks.report.latest import main

    parent = _finished_demo_run_with_prompt_following()
    assert main([]) == 0  # found through params.yaml's profile, demo
    out = capsys.readouterr().out
    assert parent in out and "| seen pairs |" in out
    assert main(["--profile", "no-such-profile"]) == 1
    assert "no finished pipeline run of profile 'no-such-profile'" in capsys.readouterr().err
