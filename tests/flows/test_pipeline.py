"""End to end on the demo profile through `micro-budget/full`: the workers are killed in the
middle of the pipeline, restarted, and a rerun completes without duplicates or lost checkpoints."""

from __future__ import annotations

import time
from collections import Counter

from prefect import get_client
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra import s3, services
from tasks.common.shards import iter_shard, read_manifest
from tasks.params import load_params
from tasks.train import checkpoint

WORKERS = ("worker-cpu", "worker-gpu")


def _kill_workers() -> None:
    # SIGKILL the whole process groups: the workers and the flow runs they started.
    services.stop_all(list(WORKERS), term_s=0.0, int_s=0.0)


def _restart_workers() -> None:
    by_name = {s.name: s for s in services.all_services()}
    for name in WORKERS:
        services.start(by_name[name])


def client_state(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def test_demo_pipeline_survives_a_killed_worker(pipeline_services):
    params = load_params(profile="demo")
    deploy()
    runs = params.storage.uri(params.storage.runs_prefix)
    stage1 = checkpoint.stage_prefix(runs, params.train.run_name, "stage1")
    # Training must start from nothing so the kill lands in the middle of it.
    for uri in list(s3.list_uris(s3.join(runs, params.train.run_name))):
        s3.delete(uri)
    first = run_deployment("micro-budget/full", timeout=0)
    deadline = time.monotonic() + 600
    # Kill as soon as training has written its first checkpoint: the middle of the pipeline.
    while checkpoint.latest(stage1) is None:
        assert time.monotonic() < deadline, "the pipeline did not reach a checkpoint in time"
        time.sleep(0.5)
    _kill_workers()
    killed = client_state(first.id)
    assert not killed.is_completed(), "the pipeline finished before the kill"
    before = checkpoint.latest(stage1)
    assert before is not None
    _restart_workers()

    second = run_deployment("micro-budget/full", timeout=900)
    assert second.state is not None and second.state.is_completed(), second.state

    report = s3.get_json(params.storage.uri("pipeline", str(second.id), "train.json"))
    stages = report["result"]["stages"]
    assert set(stages) == {"stage1", "stage2"}
    for name, stage in stages.items():
        spec = params.train.stage(name)
        assert stage["steps"] == spec.steps
    # The checkpoint that existed at the kill was kept and training went on from it.
    assert s3.exists(s3.join(before.uri, "ema", "model.safetensors"))
    after = checkpoint.latest(stage1)
    assert after is not None and after.images >= before.images
    for kind in (params.storage.raw_prefix, params.storage.latents_prefix):
        for dataset in ("coco", "cc3m", "sa1b", "textcaps"):
            manifest = read_manifest(params.storage.uri(kind, dataset))
            assert manifest is not None and manifest.samples > 0
            names = Counter(s.name for s in manifest.shards)
            assert max(names.values()) == 1, f"duplicated shard in {kind}/{dataset}"
            keys = Counter(k for shard in manifest.shards for k, _ in iter_shard(shard.uri))
            assert max(keys.values()) == 1, f"duplicated sample key in {kind}/{dataset}"
            assert sum(keys.values()) == manifest.samples
    # SA-1B arrives without captions; the caption step's sidecars are what encode used.
    captions = s3.get_json(params.storage.uri("pipeline", str(second.id), "caption.json"))
    sa1b = captions["result"]["sa1b"]
    assert sa1b["captioned"] > 0
    latents = read_manifest(params.storage.uri(params.storage.latents_prefix, "sa1b"))
    assert latents.samples == sa1b["samples"] - sum(
        v for k, v in sa1b.items() if k.startswith("failed_"))
    evaluation = s3.get_json(params.storage.uri("pipeline", str(second.id), "evaluate.json"))
    assert evaluation["result"]["fid"] > 0
