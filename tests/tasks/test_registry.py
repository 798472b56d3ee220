"""The MLflow model registry: a finished run's export becomes a new version of `micro-budget`
tagged with its scores, cost and params hash, and `sample --model models:/micro-budget/latest`
draws from it."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from infra import s3
from infra.registry import MODEL_NAME, fetch, register, resolve
from infra.settings import mlflow_uri
from tasks.cli import main
from tasks.export.export import export_next_to
from tasks.params import load_params
from tasks.report.step import register_run_model
from tasks.report.tracking import params_hash, start_pipeline_run
from tests.tasks.test_export import checkpoint, params  # noqa: F401  (fixtures)


def test_run_model_registered_and_sampled_by_reference(params, checkpoint, s3_prefix,  # noqa: F811
                                                       mlflow_service, tmp_path: Path):
    # A stage checkpoint in S3 with its diffusers export beside it, as the train step leaves.
    uri = s3.join(s3_prefix, "stage2-key", "step-000000000016")
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        s3.upload_file(path, s3.join(uri, path.relative_to(checkpoint).as_posix()))
    export = export_next_to(uri, params)
    demo = load_params(profile="demo")
    run_id = start_pipeline_run(demo, "registry-test")
    envelopes = [{"step": "train", "seconds": 1.0, "result": {"diffusers": export}},
                 {"step": "evaluate", "seconds": 1.0,
                  "result": {"fid": 123.4, "clip_score": None, "checkpoint": uri}}]
    version = register_run_model(demo, envelopes, run_id, 0.0123)
    client = MlflowClient(tracking_uri=mlflow_uri())
    registered = client.get_model_version(MODEL_NAME, version)
    assert registered.source == export and registered.run_id == run_id
    assert registered.tags["fid"] == "123.4" and registered.tags["cost_usd"] == "0.0123"
    assert registered.tags["params_hash"] == params_hash(demo)
    assert "clip_score" not in registered.tags  # no CLIP model: left out, not "None"

    # The latest version resolves to this export; its files come back from S3.
    assert resolve(f"models:/{MODEL_NAME}/latest") == export
    assert resolve(f"models:/{MODEL_NAME}/{version}") == export
    local = fetch(export, tmp_path / "fetched")
    assert (local / "model_index.json").is_file()
    out = tmp_path / "grid.png"
    assert main(["sample", "--prompt", "a red square", "--model",
                 f"models:/{MODEL_NAME}/latest", "--n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    by_run = tmp_path / "by-run.png"
    assert main(["sample", "--prompt", "a red square", "--run", run_id, "--n", "1",
                 "--steps", "2", "--out", str(by_run)]) == 0
    assert by_run.read_bytes()[:4] == b"\x89PNG"
    # A missing version or run is a one-line error, not a traceback.
    assert main(["sample", "--prompt", "x", "--run", "no-such-run",
                 "--out", str(tmp_path / "none.png")]) == 2
    assert main(["sample", "--prompt", "x", "--model", f"models:/{MODEL_NAME}/99999",
                 "--out", str(tmp_path / "none.png")]) == 2
    assert register(run_id, export, {"fid": 1.0}) != version  # every run a new version
