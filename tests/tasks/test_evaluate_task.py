"""The evaluate body on the Prefect driver: evaluates in a task run, logs to MLflow and
publishes a markdown artifact."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.artifacts import Artifact

from flows.steps import OnPrefect
from tasks.evaluate import step as evaluate_step
from tasks.evaluate.tracking import metric_names
from tests.tasks.evaluate_helpers import make_params, save_models, write_coco_shards


def test_body_logs_to_mlflow_and_publishes_artifact(tmp_path, s3_service, mlflow_service,
                                                    prefect_service):
    torch.set_num_threads(1)
    models = save_models(tmp_path)
    params = make_params(f"test/{uuid.uuid4().hex[:12]}", models)
    write_coco_shards(params.storage.uri(params.storage.raw_prefix, "coco"), tmp_path)
    params = dataclasses.replace(params, evaluate=dataclasses.replace(
        params.evaluate, checkpoint=models["checkpoint"]))

    @flow(name="evaluate-test")
    def one_checkpoint() -> dict:
        return evaluate_step.run(params, OnPrefect())

    result = one_checkpoint()
    run_id = result["mlflow_run_id"]

    client = MlflowClient(tracking_uri=mlflow_service)
    run = client.get_run(run_id)
    name = metric_names(result)["fid"]
    assert name == "eval/fid_n8_32px"
    assert run.data.metrics[name] == pytest.approx(result["fid"])
    assert run.data.tags["eval.num_samples"] == "8"
    assert run.data.tags["eval.protocol_hash"] == result["protocol_hash"]
    folder = f"eval/{result['protocol_hash']}"
    names = {Path(a.path).name for a in client.list_artifacts(run_id, folder)}
    assert names == {"result.json", "samples_grid.png"}

    artifact = Artifact.get(f"evaluate-{result['checkpoint_digest']}")
    assert artifact is not None and artifact.type == "markdown"
    assert "FID (8 samples, 32 px)" in artifact.data
    assert f"{result['fid']:.3f}" in artifact.data
