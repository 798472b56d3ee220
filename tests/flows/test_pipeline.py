"""End to end on the demo profile through `micro-budget/full`: the workers are killed during
download, during encode and during training, restarted each time, and the last rerun completes
with no duplicated shard or sample in any of the six datasets and training resumed (not
restarted) from the checkpoint that existed at the kill."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra import s3, services
from infra.settings import mlflow_uri
from tasks.common.shards import iter_shard, read_manifest
from infra.settings import REPO_ROOT
from tasks.params import load_params
from tasks.train import checkpoint, keys
from tests.corpus import write_params

WORKERS = ("worker-cpu", "worker-gpu")


def _kill_workers() -> None:
    # SIGKILL the workers and the flow runs they started (each in a session of its own), with
    # no SIGTERM first: nothing gets to close its MLflow run, as when a machine dies.
    lines = services.kill_all(list(WORKERS))
    assert not any("still running" in line for line in lines), lines


def _restart_workers() -> None:
    by_name = {s.name: s for s in services.all_services()}
    for name in WORKERS:
        services.start(by_name[name])


def client_state(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


DATASETS = ("coco", "cc3m", "sa1b", "textcaps", "journeydb", "diffusiondb")


def _wait_for(condition, what: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"the pipeline did not reach {what} in time"
        time.sleep(0.2)


def _records(prefix: str) -> list[str]:
    return list(s3.list_uris(s3.join(prefix, "_done") + "/"))


def _stage1_pointer(params):
    try:
        return checkpoint.latest(keys.stage_prefix(params, "stage1"))
    except (KeyError, ValueError):
        return None


# The demo with few-step training: this test checks resumption and records, not learning.
QUICK = REPO_ROOT / "tests" / "params" / "quick_demo.yaml"
# Stage 1 long enough that the kill lands inside it: the test polls for its first checkpoint
# (every 4 steps) and kills then; with the quick demo's 8 steps a fast machine had finished
# the stage between two polls (a CI rehearsal found the step-8 checkpoint of a done stage).
STAGE1_STEPS = 96


def _params_path(folder: Path) -> Path:
    return write_params(folder / "params.yaml",
                        {"train": {"stages": [{"steps": STAGE1_STEPS}, {}]}}, QUICK)


def _kill_when(path: Path, condition, what: str) -> None:
    """Start the pipeline, SIGKILL both workers once `condition` holds, restart them."""
    run = run_deployment("micro-budget/full", timeout=0, parameters={"params_path": str(path)})
    _wait_for(condition, what)
    _kill_workers()
    assert not client_state(run.id).is_completed(), f"the pipeline finished before {what}"
    _restart_workers()


def _tars(prefix: str) -> list[str]:
    return [u for u in s3.list_uris(prefix + "/") if u.endswith(".tar")
            and "/manifests/" not in u]


def _check_no_duplicates(prefix: str, what: str) -> int:
    """Read every tar under the prefix itself: each is in the manifest, no sample key twice."""
    manifest = read_manifest(prefix)
    assert manifest is not None and manifest.samples > 0, what
    listed = {s.uri for s in manifest.shards}
    stray = sorted(set(_tars(prefix)) - listed)
    assert not stray, f"{what}: shards outside the manifest {stray[:3]}"
    keys_seen = Counter(k for uri in sorted(listed) for k, _ in iter_shard(uri))
    dupes = [k for k, n in keys_seen.items() if n > 1]
    assert not dupes, f"{what}: sample keys in more than one place {dupes[:3]}"
    assert sum(keys_seen.values()) == manifest.samples, what
    return manifest.samples


def test_demo_pipeline_survives_killed_workers_in_every_phase(pipeline_services, tmp_path):
    path = _params_path(tmp_path)
    params = load_params(path)
    deploy()
    storage = params.storage
    # Start from nothing so each kill lands in the middle of real work.
    for prefix in (storage.raw_prefix, storage.latents_prefix,
                   f"{storage.runs_prefix}/{params.train.run_name}"):
        for uri in list(s3.list_uris(storage.uri(prefix) + "/")):
            s3.delete(uri)

    raw = {d: storage.uri(storage.raw_prefix, d) for d in DATASETS}
    latents = {d: storage.uri(storage.latents_prefix, d) for d in DATASETS}
    # 1. During download: the first shard of CC3M is committed, later datasets are not.
    _kill_when(path, lambda: bool(_records(raw["cc3m"])), "a CC3M shard")
    assert read_manifest(raw["diffusiondb"]) is None, "download had finished before the kill"
    # 2. During encode: the first latent shard is committed.
    _kill_when(path, lambda: any(_records(p) for p in latents.values()), "a latent shard")
    # 3. During training: stage 1's first checkpoint exists.
    _kill_when(path, lambda: _stage1_pointer(params) is not None, "a stage-1 checkpoint")
    before = _stage1_pointer(params)
    assert before is not None and before.step < params.train.stages[0].steps
    with tempfile.TemporaryDirectory() as tmp:
        killed_state = checkpoint.load_state(checkpoint.download(before.uri, Path(tmp)))

    final = run_deployment("micro-budget/full", timeout=900,
                           parameters={"params_path": str(path)})
    assert final.state is not None and final.state.is_completed(), final.state
    folder = storage.uri(storage.pipeline_prefix, str(final.id))

    # Training went on from the checkpoint of the kill: same step, same loss history.
    stages = s3.get_json(f"{folder}/train.json")["result"]["stages"]
    assert stages["stage1"]["resumed_from_step"] == before.step > 0
    for name, stage in stages.items():
        assert stage["steps"] == params.train.stage(name).steps
    after = _stage1_pointer(params)
    with tempfile.TemporaryDirectory() as tmp:
        final_state = checkpoint.load_state(checkpoint.download(after.uri, Path(tmp)))
    assert final_state["losses"][:before.step] == killed_state["losses"]
    assert len(final_state["losses"]) == params.train.stages[0].steps

    # No duplicates anywhere, read from the shards themselves.
    for dataset in DATASETS:
        _check_no_duplicates(raw[dataset], f"raw/{dataset}")
    for dataset in ("cc3m", "sa1b", "textcaps", "journeydb", "diffusiondb"):
        _check_no_duplicates(latents[dataset], f"latents/{dataset}")
    # SA-1B arrives without captions; the caption step's sidecars are what encode used.
    sa1b = s3.get_json(f"{folder}/caption.json")["result"]["sa1b"]
    assert sa1b["captioned"] > 0
    assert read_manifest(latents["sa1b"]).samples == sa1b["samples"] - sum(
        v for k, v in sa1b.items() if k.startswith("failed_"))
    evaluation = s3.get_json(f"{folder}/evaluate.json")["result"]
    assert evaluation["fid"] > 0 and "/stage2-" in evaluation["checkpoint"]

    # No MLflow run left RUNNING: each killed attempt ends KILLED, superseded by the next, and
    # the final run adds up what all of them spent.
    client = MlflowClient(tracking_uri=mlflow_uri())
    final_run = client.search_runs(
        [client.get_experiment_by_name("micro-budget").experiment_id],
        filter_string=f"tags.prefect_flow_run = '{final.id}'")[0]
    earlier = final_run.data.tags["previous_attempts"].split(",")
    assert len(earlier) == len(set(earlier)) >= 3  # the three kills (and any older leftover)
    for run_id in earlier:
        attempt = client.get_run(run_id)
        assert attempt.info.status == "KILLED" and attempt.data.tags["stopped_at"]
    metrics = final_run.data.metrics
    assert metrics["cost_usd_all_attempts"] > metrics["cost_usd"] > 0
