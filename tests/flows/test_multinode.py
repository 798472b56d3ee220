"""Two "nodes" x one process each, through the real Prefect server and gpu-pool worker: the
train step starts a node flow run for node 1, both meet at node 0's published endpoint, and
the stage equals the single-node two-process run (which tests/tasks/test_train_ddp.py shows
equals one process on the global batch). A node killed mid-stage fails the stage on every node;
the rerun resumes from the latest checkpoint."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import yaml
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.deployments import run_deployment
from safetensors.torch import load_file

from flows.deploy import deploy
from infra import s3
from infra.settings import REPO_ROOT, mlflow_uri
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import dumps_resolved, load_params
from tasks.train import checkpoint, keys
from tasks.train.step import run_stage


def _params_file(tmp_path: Path, root: str, run_name: str, nodes: int, gpus: int,
                 steps: int) -> Path:
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "params.yaml"), "profile": "demo",
        "overrides": {
            "storage": {"latents_prefix": f"{root}/latents", "runs_prefix": f"{root}/runs"},
            "train": {"run_name": run_name, "nodes": nodes, "gpus_per_node": gpus,
                      "micro_batch": 4, "global_batch": 8, "datasets": ["cc3m"],
                      "checkpoint_every_images": 16, "keep_checkpoints": 10, "log_every": 1,
                      "stages": [{"steps": steps}, {"steps": 1}, {"steps": 1}]}}}))
    return path


def _latents(params) -> None:
    prefix = params.storage.uri(params.storage.latents_prefix, "cc3m")
    rng = np.random.default_rng(0)
    for s in range(2):
        with LocalShard() as out:
            for i in range(16):
                out.write(f"cc3m-{s}-{i}", {
                    "lat64.npy": npy_bytes(rng.standard_normal((4, 16, 16)).astype(np.float16)),
                    "txtemb.npy": npy_bytes(rng.standard_normal((77, 64)).astype(np.float16)),
                    "txt": "x", "json": {"native_short_side": 300}})
            out.close()
            commit_shard(out.path, prefix, f"{s:05d}", out.samples)
    write_manifest("cc3m", prefix)


def _train_step(path: Path, folder: str, timeout: float | None = 900):
    text, sha256 = dumps_resolved(load_params(path))
    return run_deployment("micro-budget-step/gpu", timeout=timeout, parameters={
        "step": "train", "envelope_uri": f"{folder}/train.json", "params_yaml": text,
        "params_sha256": sha256})


def _weights(uri: str, dest: Path) -> dict:
    return load_file(checkpoint.download(uri, dest) / "model" / "model.safetensors")


def _node_pids(rank: int) -> list[int]:
    """Processes started for this node rank (run_stage sets MB_NODE_RANK on its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"MB_NODE_RANK={rank}".encode() in environ and b"tasks.train" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_two_nodes_through_prefect_match_one_node_and_survive_a_killed_node(pipeline_services,
                                                                         tmp_path):
    root = f"test/{uuid.uuid4().hex[:12]}"
    two_nodes = _params_file(tmp_path, root, "two-nodes", nodes=2, gpus=1, steps=4)
    one_node = _params_file(tmp_path, root, "one-node", nodes=1, gpus=2, steps=4)
    params = load_params(two_nodes)
    _latents(params)
    deploy()
    folder = f"s3://micro-budget/{root}/pipeline"

    done = _train_step(two_nodes, f"{folder}/a")
    assert done.state is not None and done.state.is_completed(), done.state
    stages = s3.get_json(f"{folder}/a/train.json")["result"]["stages"]
    stage1 = stages["stage1"]
    assert stage1["gpus"] == 2 and [n["node_rank"] for n in stage1["nodes"]] == [0, 1]
    # The stage is one MLflow run with each node's wall time and memory.
    run = MlflowClient(tracking_uri=mlflow_uri()).get_run(stage1["mlflow_run_id"])
    assert {"node0/held_seconds", "node1/held_seconds", "node1/peak_rss_gib"} <= \
        set(run.data.metrics)
    # Node 1 ran as its own flow run of the node deployment.
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    names = {r.name for r in runs if r.deployment_id}
    assert "stage1-node1" in names

    # The same stage on one node with two processes: the same weights.
    reference = run_stage(load_params(one_node), "stage1")
    a = _weights(stage1["checkpoint"], tmp_path / "a")
    b = _weights(reference["checkpoint"], tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert np.allclose(a[name].numpy(), b[name].numpy(), rtol=1e-5, atol=1e-6), name

    # A node killed in the middle of a stage: every node stops, the stage fails cleanly.
    killed = _params_file(tmp_path, root, "killed", nodes=2, gpus=1, steps=40)
    params = load_params(killed)
    prefix = keys.stage_prefix(params, "stage1")
    attempt = _train_step(killed, f"{folder}/b", timeout=0)
    deadline = time.monotonic() + 300
    while (checkpoint.latest(prefix) is None or not _node_pids(1)):
        assert time.monotonic() < deadline, "the two-node stage never reached a checkpoint"
        time.sleep(0.3)
    for pid in _node_pids(1):
        os.kill(pid, signal.SIGKILL)
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(attempt.id).state).is_final():
            assert time.monotonic() < deadline + 300, "the stage did not stop after the kill"
            time.sleep(1.0)
    assert state.is_failed(), state
    assert "node 1" in (state.message or "") or "node 0" in (state.message or "")
    assert not _node_pids(0) and not _node_pids(1), "a node kept running after the failure"
    at_kill = checkpoint.latest(prefix)
    assert at_kill is not None and at_kill.step < 40

    rerun = _train_step(killed, f"{folder}/c")
    assert rerun.state is not None and rerun.state.is_completed(), rerun.state
    resumed = s3.get_json(f"{folder}/c/train.json")["result"]["stages"]["stage1"]
    assert resumed["resumed_from_step"] == at_kill.step > 0 and resumed["steps"] == 40
