"""Training on CPU against real S3: a real SIGKILL mid-stage, resume, then stage 2 loads stage 1."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from infra import s3
from infra.config import to_dict
from infra.s3 import split_uri
from infra.settings import REPO_ROOT
from model.microdit import build_model
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import load_params
from tasks.train import checkpoint, keys
from tasks.train.config import StageParams
from tasks.train.loop import NonFiniteLoss, model_config, train
from tasks.train.schedule import lr_factor


def _params(s3_prefix, steps=(24, 3), every=8):
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, latents_prefix=f"{key}/latents",
                                  runs_prefix=f"{key}/runs")
    # The demo's stage structure with this test's own sizes, not its learning recipe.
    stages = (dataclasses.replace(params.train.stages[0], steps=steps[0], lr=2.4e-4,
                                  warmup_steps=2, grad_clip=0.25),
              dataclasses.replace(params.train.stages[1], steps=steps[1], lr=8.0e-5,
                                  schedule="constant", grad_clip=0.25))
    train_p = dataclasses.replace(params.train, stages=stages, checkpoint_every_images=every,
                                  datasets=("cc3m",), log_every=1000, global_batch=8,
                                  micro_batch=8, ema_half_life_images=64.0,
                                  model="demo")  # slow enough per step to be killed midway
    return dataclasses.replace(params, storage=storage, train=train_p)


def _latents(params, shards=2, per_shard=16) -> None:
    prefix = params.storage.uri(params.storage.latents_prefix, "cc3m")
    rng = np.random.default_rng(0)
    for s in range(shards):
        with LocalShard() as out:
            for i in range(per_shard):
                out.write(f"cc3m-{s}-{i}", {
                    "lat64.npy": npy_bytes(rng.standard_normal((4, 16, 16)).astype(np.float16)),
                    "txtemb.npy": npy_bytes(rng.standard_normal((77, 64)).astype(np.float16)),
                    "txt": "x", "json": {}})
            out.close()
            commit_shard(out.path, prefix, f"{s:05d}", out.samples)
    write_manifest("cc3m", prefix)


def _write_params(params, path) -> str:
    block = {k: v for k, v in to_dict(params).items() if k != "profile"}
    path.write_text(yaml.safe_dump({"profile": "demo", "demo": block}))
    return str(path)


def _stage_prefix(params, stage):
    return keys.stage_prefix(params, stage)


def test_lr_schedule_warmup_cosine_and_floor():
    stage = StageParams(name="s", resolution=64, mask_ratio=0.75, steps=100, lr=1.0,
                        schedule="cosine", warmup_steps=10, final_lr_ratio=0.33)
    assert lr_factor(stage, 0) == pytest.approx(0.1)
    assert lr_factor(stage, 10) == pytest.approx(1.0)
    assert lr_factor(stage, 100) == pytest.approx(0.33)
    assert 0.33 < lr_factor(stage, 55) < 1.0


def test_killed_stage_resumes_from_its_checkpoint_then_stage2_loads_it(s3_prefix, tmp_path):
    params = _params(s3_prefix)
    _latents(params)
    path = _write_params(params, tmp_path / "params.yaml")
    cmd = [sys.executable, "-m", "tasks.train.launch", "--stage", "stage1", "--params", path,
           "--no-mlflow", "--summary", str(tmp_path / "s1.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, start_new_session=True)
    prefix = _stage_prefix(params, "stage1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pointer = checkpoint.latest(prefix)
        if pointer is not None and pointer.step >= 2:
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.latest(prefix)
    assert killed_at is not None and 2 <= killed_at.step < 24

    summary = train(params, "stage1")
    # Resumed at the last checkpoint: at most one interval (1 step of 8 images) redone.
    assert summary["resumed_from_step"] == killed_at.step
    assert summary["steps"] == 24 and summary["images"] == 24 * 8
    # The loss curve continues: the losses before the kill are kept, none repeated or lost.
    assert len(summary["losses"]) == 24
    assert all(np.isfinite(summary["losses"]))
    # Retention: the newest keep_checkpoints (2) checkpoints, the final one among them.
    final = checkpoint.latest(prefix)
    assert final.step == 24
    assert checkpoint.saved(prefix) == [s3.join(prefix, "step-000000000184"), final.uri]

    stage2 = train(params, "stage2")
    assert stage2["resumed_from_step"] == 0 and stage2["steps"] == 3
    assert stage2["checkpoint"].endswith("step-000000000024")
    # Stage 2 started from stage 1's final weights: 3 Adam steps at lr 8e-5 move no weight
    # by more than ~3 lr, while a fresh initialisation differs by orders of magnitude more.
    stage2_prefix = _stage_prefix(params, "stage2")
    assert checkpoint.latest(stage2_prefix).source == final.uri
    first, second = _weights(final.uri, tmp_path / "a"), _weights(stage2["checkpoint"],
                                                                   tmp_path / "b")
    fresh = build_model(model_config(params.train, params.train.stages[1])).state_dict()
    assert first.keys() == second.keys()
    moved = max(float((first[k] - second[k]).abs().max()) for k in first)
    from_fresh = max(float((first[k] - fresh[k]).abs().max()) for k in first)
    assert moved < 1e-3 < from_fresh
    # Stage 1's final checkpoint is what stage 2 names: pruning stage 1 never removes it.
    assert checkpoint.prune(prefix, 1, checkpoint.sources_of_run(prefix)) == \
        [s3.join(prefix, "step-000000000184")]
    assert checkpoint.saved(prefix) == [final.uri]


def _weights(uri, dest):
    from safetensors.torch import load_file

    root = checkpoint.download(uri, dest)
    return load_file(root / "model" / "model.safetensors")


def test_nan_guard_stops_with_a_clear_error(s3_prefix):
    params = _params(s3_prefix)
    exploding = dataclasses.replace(params.train.stages[0], lr=1e30, grad_clip=1e30, steps=50)
    params = dataclasses.replace(params, train=dataclasses.replace(
        params.train, stages=(exploding, params.train.stages[1])))
    _latents(params, shards=1, per_shard=8)
    with pytest.raises(NonFiniteLoss, match="loss is"):
        train(params, "stage1")


def test_fsdp_stage_on_two_ranks_checkpoints_full_weights_that_resume_anywhere(s3_prefix, tmp_path):
    """torchrun, 2 CPU ranks, FSDP: the checkpoint holds whole tensors, so stage 2 continues
    from it in one plain process."""
    params = _params(s3_prefix, steps=(4, 2), every=16)
    params = dataclasses.replace(params, train=dataclasses.replace(
        params.train, backend="fsdp", gpus_per_node=2, micro_batch=4))
    _latents(params)
    path = _write_params(params, tmp_path / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={port}", "-m", "tasks.train.launch", "--stage", "stage1", "--params",
           path, "--no-mlflow", "--summary", str(tmp_path / "s1.json")]
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, timeout=300)
    summary = json.loads((tmp_path / "s1.json").read_text())
    assert summary["gpus"] == 2 and summary["steps"] == 4 and all(np.isfinite(summary["losses"]))
    pointer = checkpoint.latest(_stage_prefix(params, "stage1"))
    assert pointer.step == 4
    single = dataclasses.replace(params, train=dataclasses.replace(
        params.train, backend="ddp", gpus_per_node=1, micro_batch=8))
    stage2 = train(single, "stage2")  # loads stage 1's weights and optimizer moments
    assert stage2["steps"] == 2 and np.isfinite(stage2["final_loss"])


def test_cli_params_file_reaches_the_training_process(s3_prefix, mlflow_service, tmp_path):
    """`python -m tasks train --params F` trains F, not the repository's params.yaml: the
    distinct run name of F names the checkpoints of every stage."""
    from tasks.models import build_local_models

    build_local_models(load_params(profile="demo"))  # the encoders of the stage's sample grid
    params = _params(s3_prefix, steps=(2, 1))
    params = dataclasses.replace(params, train=dataclasses.replace(
        params.train, run_name="cli-distinct-run"))
    # The CLI's loss plots go under out_dir: this test's folder, not the checkout's out/.
    params = dataclasses.replace(params, storage=dataclasses.replace(
        params.storage, out_dir=str(tmp_path / "out")))
    _latents(params)
    path = _write_params(params, tmp_path / "params.yaml")
    out = tmp_path / "train.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MB_PARAMS": str(REPO_ROOT / "params.yaml")}
    subprocess.run([sys.executable, "-m", "tasks", "train", "--params", path, "--out", str(out)],
                   cwd=REPO_ROOT, env=env, check=True, timeout=600)
    stages = json.loads(out.read_text())["result"]["stages"]
    for name, steps in (("stage1", 2), ("stage2", 1)):
        pointer = checkpoint.latest(_stage_prefix(params, name))
        assert pointer is not None and pointer.step == steps
        assert f"/runs/cli-distinct-run/{name}-" in pointer.uri and stages[name]["checkpoint"] == pointer.uri
        assert (tmp_path / "out" / "plots" / "loss" / f"{name}.csv").exists()
