"""Preemptible GPUs on CPU with real signals (issue 34): a SIGTERM to the whole process group
of a 2-rank torchrun stage, as a cloud provider sends before taking a node back."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from infra import s3
from infra.config import to_dict
from infra.retry import RetryPolicy
from infra.s3 import split_uri
from infra.settings import REPO_ROOT
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import load_params
from tasks.train import checkpoint, keys
from tasks.train.loop import train

STEPS = 14


def _params(s3_prefix, world=2, every=10 ** 9, grace=30.0, run="preempted", steps=STEPS):
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, latents_prefix=f"{key}/latents",
                                  runs_prefix=f"{key}/runs")
    stage = dataclasses.replace(params.train.stages[0], steps=steps, warmup_steps=2)
    train_p = dataclasses.replace(params.train, stages=(stage,), datasets=("cc3m",),
                                  dataset_weights={}, global_batch=8, micro_batch=8 // world,
                                  gpus_per_node=world, checkpoint_every_images=every,
                                  log_every=1, ema_every=1, run_name=run,
                                  preempt_grace_s=grace, model="demo")
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


def _command(params, tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.yaml"
    block = {k: v for k, v in to_dict(params).items() if k != "profile"}
    path.write_text(yaml.safe_dump({"profile": "demo", "demo": block}))
    args = ["-m", "tasks.train.launch", "--stage", params.train.stages[0].name, "--params",
            str(path), "--no-mlflow", "--summary", str(tmp_path / f"{name}.json")]
    if params.train.world == 1:
        return [sys.executable, *args]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={params.train.world}", f"--master_port={port}", *args]


ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _preempt_at(params, tmp_path: Path, name: str, at_step: int) -> tuple[int, float, dict]:
    """Start the stage, SIGTERM its process group once rank 0 printed `at_step`; returns the
    exit status, the seconds from the signal to the exit, and the preemption record."""
    proc = subprocess.Popen(_command(params, tmp_path, name), cwd=REPO_ROOT, env=ENV,
                            start_new_session=True, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith(f"step {at_step} "):
            break
    else:
        pytest.fail("the stage ended before it could be preempted")
    os.killpg(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    sys.stdout.write(proc.stdout.read())
    rc = proc.wait(timeout=120)
    return rc, time.monotonic() - sent, json.loads((tmp_path / f"{name}.json").read_text())


def _weights(uri: str, dest: Path) -> dict[str, torch.Tensor]:
    root = checkpoint.download(uri, dest)
    return {**{f"model.{k}": v for k, v in load_file(root / "model/model.safetensors").items()},
            **{f"ema.{k}": v for k, v in load_file(root / "ema/model.safetensors").items()}}


def test_sigterm_checkpoints_within_the_grace_period_and_resumes_bitwise(s3_prefix, tmp_path):
    params = _params(s3_prefix)
    _latents(params)
    stage = params.train.stages[0].name
    prefix = keys.stage_prefix(params, stage)

    rc, exit_s, record = _preempt_at(params, tmp_path, "first", at_step=4)
    assert rc != 0  # torchrun reports a stopped worker; the record says why
    assert record["preempted"] and record["saved_on_notice"]
    assert record["save_seconds"] <= params.train.preempt_grace_s
    assert exit_s <= params.train.preempt_grace_s + 10  # torchrun's own shutdown on top
    pointer = checkpoint.latest(prefix)
    # No periodic checkpoint before the notice: this one was written on it.
    assert pointer.uri == record["checkpoint"] and 4 <= pointer.step == record["step"] < STEPS
    assert checkpoint.saved(prefix) == [pointer.uri] and checkpoint.complete(pointer.uri)

    subprocess.run(_command(params, tmp_path, "resumed"), cwd=REPO_ROOT, env=ENV, check=True,
                   timeout=600)
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["resumed_from_step"] == pointer.step and resumed["steps"] == STEPS

    straight = _params(s3_prefix, run="straight")
    subprocess.run(_command(straight, tmp_path, "straight"), cwd=REPO_ROOT, env=ENV,
                   check=True, timeout=600)
    uninterrupted = json.loads((tmp_path / "straight.json").read_text())
    assert uninterrupted["resumed_from_step"] is None
    # The same data order and noise on the same 2 ranks: bitwise equal weights and EMA.
    a = _weights(resumed["checkpoint"], tmp_path / "a")
    b = _weights(uninterrupted["checkpoint"], tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["losses"] == uninterrupted["losses"]


def test_a_save_slower_than_the_grace_period_resumes_from_the_previous_checkpoint(s3_prefix,
                                                                                 tmp_path):
    """Grace 0 s: no save can finish in it. The pointer stays on the last complete periodic
    checkpoint (every 2 steps), and the stage resumes there."""
    params = _params(s3_prefix, every=16, grace=0.0)
    _latents(params)
    stage = params.train.stages[0].name
    prefix = keys.stage_prefix(params, stage)
    rc, _, record = _preempt_at(params, tmp_path, "first", at_step=5)
    assert rc != 0 and record["preempted"] and not record["saved_on_notice"]
    pointer = checkpoint.latest(prefix)
    assert pointer.step == record["resumes_from_step"] < record["step"]
    assert pointer.step >= 2 and checkpoint.complete(pointer.uri)
    assert s3.join(prefix, f"step-{record['step'] * 8:012d}") != pointer.uri

    summary = train(_params(s3_prefix, world=1, every=16, grace=0.0), stage)  # any rank count
    assert summary["resumed_from_step"] == pointer.step and summary["steps"] == STEPS


def test_a_kill_during_an_async_upload_leaves_no_pointer_to_it(s3_prefix, tmp_path):
    """A checkpoint every step, uploaded in the background; SIGKILL the stage as soon as a
    checkpoint folder newer than the pointer has some of its files."""
    params = _params(s3_prefix, world=1, every=8, steps=200)
    _latents(params)
    prefix = keys.stage_prefix(params, params.train.stages[0].name)
    proc = subprocess.Popen(_command(params, tmp_path, "killed"), cwd=REPO_ROOT, env=ENV,
                            start_new_session=True, stdout=subprocess.DEVNULL)
    partial = None
    deadline = time.monotonic() + 300
    while partial is None and time.monotonic() < deadline and proc.poll() is None:
        pointer = checkpoint.latest(prefix)
        for folder in checkpoint.saved(prefix)[::-1]:
            if (pointer is None or folder > pointer.uri) and not checkpoint.complete(folder) \
                    and s3.list_uris(folder + "/"):
                partial = folder
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial is not None, "no upload was caught in flight"
    pointer = checkpoint.latest(prefix)
    assert pointer is None or checkpoint.complete(pointer.uri)
    assert [f for f in checkpoint.saved(prefix) if not checkpoint.complete(f)], \
        "the upload finished before the kill"
    if pointer is not None:
        assert pointer.uri != partial or checkpoint.complete(partial)


def _snapshot(model: torch.nn.Module) -> checkpoint.Snapshot:
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    return checkpoint.Snapshot(model=model, weights=weights, ema_weights=weights,
                               state={"step": 1}, step=1, images=8)


def test_a_failed_upload_is_retried_and_reported_a_bug_is_not(s3_service, s3_prefix):
    from model.config import preset
    from model.microdit import build_model

    lines: list[str] = []
    quick = RetryPolicy(retries=2, backoff_s=0.01, backoff_max_s=0.01)
    # A bucket name S3 refuses: every upload fails, and the saver tries 3 times.
    missing = checkpoint.Saver("s3://no_such:bucket/run/stage", 1, quick, lines.append)
    missing.submit(_snapshot(build_model(preset("tiny"))))
    with pytest.raises(checkpoint.CheckpointFailed, match="no_such:bucket"):
        missing.wait()
    assert missing.retries == 2 and len(lines) == 2 and "retry 2" in lines[-1]

    # A bug (a model that is not a MicroDiT cannot be serialised): raised once, not retried.
    lines.clear()
    buggy = checkpoint.Saver(s3_prefix + "/run/stage", 1, quick, lines.append)
    buggy.submit(_snapshot(torch.nn.Linear(2, 2)))
    with pytest.raises(checkpoint.CheckpointFailed) as err:
        buggy.wait()
    assert isinstance(err.value.__cause__, TypeError) and buggy.retries == 0 and not lines
    assert checkpoint.latest(s3_prefix + "/run/stage") is None


def _children(pid: int, marker: str) -> list[int]:
    """Descendants of `pid` whose command line holds `marker` (from /proc, no psutil)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                               .split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                frontier.append(child)
                try:
                    if marker in (Path("/proc") / str(child) / "cmdline").read_text():
                        found.append(child)
                except OSError:
                    pass
    return found


def test_run_stage_restarts_a_preempted_stage_and_bills_the_lost_work(s3_prefix,
                                                                      mlflow_service, tmp_path):
    """The launcher (run_stage, what the CLI, DVC and the flow's gpu task call) on spot: the
    rank gets SIGTERM at step 5 with a grace no save fits in, so the stage resumes from the
    periodic checkpoint of step 4 (or the start) and the steps after it are lost. It is started
    again by itself, ends with the weights of an uninterrupted run, and its attempts, its MLflow
    run and the report's table hold the preemption, the lost work priced at spot and the spot
    spend."""
    from mlflow.tracking import MlflowClient

    from tasks.common import attempts
    from tasks.common.cost import attempts_bill, price
    from tasks.report.step import attempts_markdown, stage_bills
    from tasks.train.step import run_stage

    def spot(p):  # no sample prompts: no grid, so no encoders to build
        return dataclasses.replace(p, cost=dataclasses.replace(p.cost, price_class="spot"),
                                   train=dataclasses.replace(p.train, sample_prompts=()))

    params = spot(_params(s3_prefix, world=1, every=32, grace=0.0, run="spot", steps=8))
    _latents(params)
    stage = params.train.stages[0].name
    sent: list[int] = []

    def preempt(progress) -> None:
        if progress.step == 5 and not sent:
            sent.extend(_children(os.getpid(), "tasks.train.launch"))
            for pid in sent:
                os.kill(pid, signal.SIGTERM)

    result = run_stage(params, stage, progress=preempt)
    assert sent, "no rank was signalled"
    [record] = result["preemptions"]
    # Step 4's checkpoint if its upload had finished by the notice, else none (step 0).
    assert record["step"] >= 5 and record["resumes_from_step"] in (0, 4)
    assert record["lost_steps"] == record["step"] - record["resumes_from_step"] >= 1
    assert result["resumed_from_step"] == (record["resumes_from_step"] or None)
    assert result["steps"] == 8

    straight = spot(_params(s3_prefix, world=1, every=32, grace=0.0, run="straight", steps=8))
    uninterrupted = run_stage(straight, stage)
    assert uninterrupted["preemptions"] == [] and uninterrupted["resumed_from_step"] is None
    a = _weights(result["checkpoint"], tmp_path / "a")
    b = _weights(uninterrupted["checkpoint"], tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    records = attempts.read(keys.stage_prefix(params, stage))
    assert [r["status"] for r in records] == ["preempted", "finished"]
    assert all(r["price_class"] == "spot" for r in records)
    assert records[0]["lost_steps"] == record["lost_steps"]
    assert records[0]["lost_seconds"] == record["lost_seconds"] > 0
    assert records[0]["device_hours"] == pytest.approx(records[0]["seconds"] / 3600)
    bill = attempts_bill(params.cost, records)
    lost = price(params.cost, record["lost_seconds"], 1)
    assert bill["preemptions"] == 1 and bill["attempts"] == 2 and bill["on_demand_cost_usd"] == 0
    assert bill["lost_cost_usd"] == pytest.approx(lost.cost_usd) and lost.price_class == "spot"
    assert bill["spot_cost_usd"] == pytest.approx(
        sum(r["seconds"] for r in records) / 3600 * params.cost.spot_usd_per_gpu_hour["cpu"])
    assert result["cost"]["bill"] == bill

    run = MlflowClient(tracking_uri=mlflow_service).get_run(result["mlflow_run_id"])
    m = run.data.metrics
    assert m["attempts"] == 2 and m["preemptions"] == 1 and m["lost_steps"] == record["lost_steps"]
    assert m["lost_device_hours"] == pytest.approx(record["lost_seconds"] / 3600)
    assert m["spot_cost_usd"] == pytest.approx(bill["spot_cost_usd"])
    assert m["on_demand_cost_usd"] == 0 and run.data.tags["price_class"] == "spot"

    envelopes = [{"step": "train", "seconds": 1.0, "result": {"stages": {stage: result}}}]
    assert stage_bills(params, envelopes) == {stage: bill}
    assert f"| {stage} | 2 | 1 | {record['lost_steps']} |" in attempts_markdown({stage: bill})


def test_run_stage_does_not_retry_a_bug(s3_prefix, mlflow_service):
    """A stage with no latents to read fails (exit status 1, not PREEMPTED): raised after one
    attempt, recorded as failed."""
    from tasks.common import attempts
    from tasks.train.step import StagePreempted, run_stage

    params = _params(s3_prefix, world=1, run="bug", steps=2)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                   sample_prompts=()))
    stage = params.train.stages[0].name
    with pytest.raises(RuntimeError, match="exited with") as err:
        run_stage(params, stage)
    assert not isinstance(err.value, StagePreempted)
    assert [r["status"] for r in attempts.read(keys.stage_prefix(params, stage))] == ["failed"]


def test_checkpoint_every_min_saves_on_wall_time_alone(s3_prefix):
    """No image interval within the stage: train.checkpoint_every_min (here ~6 ms) alone makes
    the periodic checkpoints, each complete, beside the final one."""
    params = _params(s3_prefix, world=1, run="every-min", steps=6)
    params = dataclasses.replace(params, train=dataclasses.replace(
        params.train, checkpoint_every_min=1e-4, keep_checkpoints=10))
    _latents(params)
    stage = params.train.stages[0].name
    prefix = keys.stage_prefix(params, stage)
    summary = train(params, stage)
    saved = checkpoint.saved(prefix)
    assert len(saved) >= 3 and all(checkpoint.complete(f) for f in saved)
    assert checkpoint.latest(prefix).step == summary["steps"] == 6
