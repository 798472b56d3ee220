"""A training stage's MLflow logging goes out in batches from a background thread: at least 10x
fewer HTTP requests to the tracking server than one request per value, the same values."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import requests
from mlflow.tracking import MlflowClient

from infra.config import flatten, to_dict
from infra.tracking import experiment_id
from tasks.train.loop import train
from tasks.train.tracking import StageRun
from tests.tasks.test_train import _latents, _params


@pytest.fixture
def tracking_requests(monkeypatch, mlflow_service):
    """Every HTTP request this process sends to the tracking server, as (method, path, thread)."""
    sent: list[tuple[str, str, int]] = []
    original = requests.Session.request

    def counted(self, method, url, *args, **kwargs):
        if str(url).startswith(mlflow_service):
            sent.append((method, str(url)[len(mlflow_service):], threading.get_ident()))
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", counted)
    return sent


def _history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    metrics = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in metrics}


def test_a_stage_logs_in_batches_with_the_same_values(s3_prefix, tracking_requests):
    params = _params(s3_prefix, steps=(24, 3))
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, log_every=1))
    _latents(params)
    stage = params.train.stages[0].name

    run = StageRun(params, stage, parent_run_id=None)  # a batch every 30 s at most
    # Requests the training thread itself sent while inside a log call: a round trip it waited on.
    calls: list[int] = []

    def watched_log(metrics, step):
        before = len(tracking_requests)
        run.log(metrics, step)
        calls.append(sum(1 for *_, thread in tracking_requests[before:]
                         if thread == threading.get_ident()))

    summary = train(params, stage, watched_log)
    run.finish(params, summary, grid_png=None)
    batched = len(tracking_requests)

    # The same values, one request each: how the stage logged before (one log_param per
    # param, one log_metric per value), into a run of its own.
    client = MlflowClient()
    logged = client.get_run(run.run_id).data
    history = _history(client, run.run_id)
    tracking_requests.clear()
    old = client.create_run(experiment_id(client), run_name="one-request-per-value")
    for key, value in logged.params.items():
        client.log_param(old.info.run_id, key, value)
    for key, points in history.items():
        for step, value in points:
            client.log_metric(old.info.run_id, key, value, step=step)
    client.set_tag(old.info.run_id, "checkpoint_uri", logged.tags["checkpoint_uri"])
    client.set_terminated(old.info.run_id)
    unbatched = len(tracking_requests)

    assert len(calls) == 24
    assert [s for s, _ in history["loss"]] == list(range(1, 25))
    assert history == _history(client, old.info.run_id)
    expected = flatten({"stage": to_dict(params.train.stage(stage)),
                        "train": {k: v for k, v in to_dict(params.train).items()
                                  if k != "stages"}})
    assert logged.params == {k: str(v)[:500] for k, v in expected.items()}
    assert logged.tags["checkpoint_uri"] == summary["checkpoint"]
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert batched * 10 <= unbatched, (batched, unbatched)
    # The loop only queues: no log call sends a request from the training thread (a wall-clock
    # bound would be a timing test on a shared machine; this is the property itself).
    assert calls == [0] * 24, calls


def test_a_stage_that_dies_still_flushes_and_ends_failed(s3_prefix, mlflow_service):
    params = _params(s3_prefix)
    run = StageRun(params, params.train.stages[0].name, parent_run_id=None, every_s=60.0)
    for step in range(1, 6):
        run.log({"loss": 1.0 / step}, step)
    run.close()  # what atexit does when the stage raises before finish()
    client = MlflowClient()
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [1, 2, 3, 4, 5]
