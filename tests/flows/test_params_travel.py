"""Approved params travel: a step flow run on a worker started from another checkout, whose
params.yaml differs, trains the params the driver resolved and sent as text with its hash; a
text that does not match its hash is refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import yaml
from mlflow.tracking import MlflowClient
from prefect import flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import WorkerStatus
from prefect.deployments import run_deployment

from infra import s3, services
from infra.settings import REPO_ROOT, mlflow_uri
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import Params, dumps_resolved, load_params
from tasks.train import checkpoint, keys
from tests.tasks.test_encode import tiny_models  # noqa: F401 (fixture)

# One short stage: the test checks which params trained, not what they learnt.
STAGE = {"name": "stage1", "resolution": 64, "mask_ratio": 0.0, "steps": 2, "lr": 3.0e-4}


def _driver_params(tmp_path: Path, root: str, encoders: tuple[str, str]) -> Params:
    path = tmp_path / "approved.yaml"
    path.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "params.yaml"), "profile": "demo",
        "overrides": {
            "encode": {"vae": encoders[0], "text_encoder": encoders[1]},
            "storage": {"latents_prefix": f"{root}/latents", "runs_prefix": f"{root}/runs"},
            "train": {"run_name": "approved", "datasets": ["cc3m"], "global_batch": 8,
                      "micro_batch": 8, "checkpoint_every_images": 16, "stages": [STAGE]},
            "evaluate": {"extra_stages": []}}}))
    return load_params(path)


def _other_checkout(tmp_path: Path, driver: Params) -> Path:
    """A copy of the repository whose params.yaml trains another recipe into the same place."""
    copy = tmp_path / "other-checkout"
    shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".state*", "out", "__pycache__", ".pytest_cache"))
    data = yaml.safe_load((copy / "params.yaml").read_text())
    data["demo"]["storage"] = dict(data["demo"]["storage"], **{
        "latents_prefix": driver.storage.latents_prefix, "runs_prefix": driver.storage.runs_prefix})
    data["demo"]["train"].update(run_name="approved", datasets=["cc3m"], global_batch=8,
                                 micro_batch=8, stages=[dict(STAGE, lr=9.0e-4, steps=3)])
    data["demo"]["evaluate"]["extra_stages"] = []
    (copy / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return copy


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


def _start_worker(copy: Path, pool: str) -> subprocess.Popen:
    """A process worker whose working directory and PYTHONPATH are the other checkout."""
    env = {**os.environ, **services._worker(pool).env(), "PYTHONPATH": str(copy),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = open(copy / "worker.log", "ab")
    return subprocess.Popen([str(services.BIN / "prefect"), "worker", "start", "--pool", pool,
                             "--type", "process", "--name", pool], cwd=copy, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_online(pool: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while not any(w.status == WorkerStatus.ONLINE
                      for w in client.read_workers_for_work_pool(pool)):
            assert time.monotonic() < deadline, f"the worker of {pool} never came online"
            time.sleep(1.0)


def test_a_worker_of_another_checkout_trains_the_approved_params(prefect_service, mlflow_service,
                                                                tiny_models, tmp_path):
    root = f"test/{uuid.uuid4().hex[:12]}"
    driver = _driver_params(tmp_path, root, tiny_models)
    copy = _other_checkout(tmp_path, driver)
    theirs = load_params(copy / "params.yaml", "demo")
    assert keys.stage_prefix(theirs, "stage1") != keys.stage_prefix(driver, "stage1")
    _latents(driver)
    pool = f"travel-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    # The step deployment as the other machine registers it: its code, its checkout.
    flow.from_source(str(copy), "flows/steps.py:run_step").deploy(
        name=pool, work_pool_name=pool, print_next_steps=False)
    worker = _start_worker(copy, pool)
    try:
        _wait_online(pool)
        text, sha256 = dumps_resolved(driver)
        folder = f"s3://micro-budget/{root}/pipeline"
        done = run_deployment(f"micro-budget-step/{pool}", timeout=900, parameters={
            "step": "train", "envelope_uri": f"{folder}/train.json", "params_yaml": text,
            "params_sha256": sha256})
        assert done.state is not None and done.state.is_completed(), done.state
        stage = s3.get_json(f"{folder}/train.json")["result"]["stages"]["stage1"]
        # The checkpoint is keyed by the approved params, and nothing trained under theirs.
        pointer = checkpoint.latest(keys.stage_prefix(driver, "stage1"))
        assert pointer is not None and pointer.step == STAGE["steps"]
        assert stage["checkpoint"] == pointer.uri
        assert checkpoint.latest(keys.stage_prefix(theirs, "stage1")) is None
        logged = MlflowClient(tracking_uri=mlflow_uri()).get_run(stage["mlflow_run_id"])
        assert float(logged.data.params["stage.lr"]) == STAGE["lr"]
        assert logged.data.params["stage.steps"] == str(STAGE["steps"])

        # A text changed on the way is refused with one line, before anything runs.
        changed = text.replace("lr: 0.0003", "lr: 0.0009")
        assert changed != text
        bad = run_deployment(f"micro-budget-step/{pool}", timeout=300, parameters={
            "step": "train", "envelope_uri": f"{folder}/bad.json", "params_yaml": changed,
            "params_sha256": sha256})
        assert bad.state is not None and bad.state.is_failed(), bad.state
        assert "changed on the way" in (bad.state.message or ""), bad.state.message
        assert not s3.exists(f"{folder}/bad.json")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
