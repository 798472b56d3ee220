"""What a user sees and what two users get: `prefect deployment run micro-budget/full --watch`
prints each step's start and end and the training's step of total, images/s and ETA; two
identical pipeline runs started together take turns and leave one consistent checkpoint chain.

Both train a short stage on synthetic latents (steps: [train]): the data steps are covered by
the pipeline tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra import s3, services
from infra.settings import REPO_ROOT
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import Params, load_params
from tasks.train import checkpoint, keys
from tests.tasks.test_encode import tiny_models  # noqa: F401 (fixture)

STEPS = 40  # optimizer steps of the one stage: long enough for several progress lines


def _params_file(tmp_path: Path, root: str, run_name: str, encoders: tuple[str, str]) -> Path:
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "params.yaml"), "profile": "demo",
        "overrides": {
            "encode": {"vae": encoders[0], "text_encoder": encoders[1]},
            "storage": {"latents_prefix": f"{root}/latents", "runs_prefix": f"{root}/runs",
                        "out_dir": str(tmp_path / "out")},
            "train": {"run_name": run_name, "datasets": ["cc3m"], "global_batch": 8,
                      "micro_batch": 8, "checkpoint_every_images": 64, "log_every": 2,
                      "stages": [{"name": "stage1", "resolution": 64, "mask_ratio": 0.0,
                                  "steps": STEPS, "lr": 3.0e-4}]},
            "evaluate": {"extra_stages": []}}}))
    return path


def _latents(params: Params) -> None:
    prefix = params.storage.uri(params.storage.latents_prefix, "cc3m")
    rng = np.random.default_rng(0)
    width = params.train.model_overrides["caption_dim"]
    with LocalShard() as out:
        for i in range(16):
            out.write(f"cc3m-0-{i}", {
                "lat64.npy": npy_bytes(rng.standard_normal((4, 16, 16)).astype(np.float16)),
                "txtemb.npy": npy_bytes(rng.standard_normal(
                    (params.encode.text_length, width)).astype(np.float16)),
                "txt": "x", "json": {"native_short_side": 300}})
        out.close()
        commit_shard(out.path, prefix, "00000", out.samples)
    write_manifest("cc3m", prefix)


@pytest.fixture
def short_run(prefect_service, mlflow_service, tiny_models, tmp_path) -> tuple[Path, Params]:
    root = f"test/{uuid.uuid4().hex[:12]}"
    path = _params_file(tmp_path, root, f"watch-{uuid.uuid4().hex[:6]}", tiny_models)
    params = load_params(path)
    _latents(params)
    deploy()
    return path, params


def test_watch_shows_each_step_and_where_training_is(short_run):
    path, _ = short_run
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    done = subprocess.run(
        [str(services.BIN / "prefect"), "deployment", "run", "micro-budget/full", "--params",
         json.dumps({"params_path": str(path), "steps": ["train"]}), "--watch",
         "--watch-timeout", "900"], env=env, capture_output=True, text=True, timeout=960)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "step train starting (1 of 1)" in out, out[-3000:]
    assert re.search(r"step train done in [0-9.]+ s", out), out[-3000:]
    # The training's place: step of total, images/s and an ETA, from rank 0's progress lines.
    progress = re.findall(rf"step train: stage1: step (\d+) of {STEPS}, (\d+) img/s, ETA "
                          r"([0-9.]+ min|unknown)", out)
    assert progress, out[-3000:]
    assert all(0 < int(step) <= STEPS and int(rate) > 0 for step, rate, _ in progress)
    assert any(eta != "unknown" for _, _, eta in progress), progress


def _flow_run(run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _step_runs(parent_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def test_two_identical_runs_take_turns_and_leave_one_consistent_chain(short_run):
    path, params = short_run
    parameters = {"params_path": str(path), "steps": ["train"]}
    first = run_deployment("micro-budget/full", timeout=0, parameters=parameters)
    second = run_deployment("micro-budget/full", timeout=0, parameters=parameters)
    deadline = time.monotonic() + 1200
    while not all(_flow_run(r.id).state.is_final() for r in (first, second)):
        assert time.monotonic() < deadline, "the two pipeline runs did not end"
        time.sleep(2.0)
    runs = [_flow_run(r.id) for r in (first, second)]
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    # Their train steps never overlapped: one ran while the other waited for its slot.
    steps = sorted((run for r in runs for run in _step_runs(r.id) if run.name == "train"),
                   key=lambda run: run.start_time)
    assert len(steps) == 2, steps
    assert steps[0].end_time <= steps[1].start_time, steps
    # One checkpoint chain: the last checkpoint is the stage's last step, and the second run
    # resumed from it instead of training again next to the first.
    pointer = checkpoint.latest(keys.stage_prefix(params, "stage1"))
    assert pointer is not None and pointer.step == STEPS
    resumed = sorted(s3.get_json(params.storage.uri(params.storage.pipeline_prefix, str(r.id),
                                                    "train.json"))["result"]["stages"]["stage1"]
                     ["resumed_from_step"] or 0 for r in runs)
    assert resumed == [0, STEPS], resumed
