"""MLflow runs are logged to the local server and artifacts land in S3 through the proxy."""

from __future__ import annotations

import uuid

import mlflow
from mlflow.tracking import MlflowClient

from infra import s3


def test_run_logged_and_artifact_in_s3(mlflow_service, tmp_path):
    mlflow.set_tracking_uri(mlflow_service)
    mlflow.set_experiment("test-platform")
    note = tmp_path / "note.txt"
    token = uuid.uuid4().hex
    note.write_text(token)
    with mlflow.start_run() as run:
        mlflow.log_param("profile", "demo")
        mlflow.log_metric("cost_usd", 1.25)
        mlflow.log_artifact(str(note))
    client = MlflowClient(mlflow_service)
    got = client.get_run(run.info.run_id)
    assert got.data.params["profile"] == "demo"
    assert got.data.metrics["cost_usd"] == 1.25
    local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert open(local).read() == token
    # The server proxies artifacts into the `mlflow` bucket: the bytes are really in S3.
    stored = [u for u in s3.list_uris("s3://mlflow/artifacts/") if run.info.run_id in u]
    assert any(u.endswith("note.txt") for u in stored)
