"""Units over workers: two workers polling one pool share an encode step's units.

The test runs on a pool of its own, so the shared `gpu` worker (no limit) cannot take the chunks
and other tests' runs cannot land on the test's workers. Each worker runs one flow run at a time
(`--limit 1`), as gpu workers do at scale: the worker that runs the step flow takes chunk 0
itself, so the chunk flow run can only go to the other worker.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import WorkerStatus
from prefect.deployments import run_deployment

from flows.deploy import deploy_pool
from infra import s3, services
from tasks.common.shards import iter_shard, read_manifest
from tasks.encode.run import latent_prefix
from tasks.params import dumps_resolved
from tests.tasks.test_encode import _params, _raw_dataset, tiny_models  # noqa: F401 (fixture)


def _start_worker(pool: str, name: str) -> str:
    base = services._worker(pool)
    worker = dataclasses.replace(
        base, name=f"worker-{name}",
        command=lambda: [str(services.BIN / "prefect"), "worker", "start", "--pool", pool,
                         "--type", "process", "--name", name, "--limit", "1"],
        env=lambda: {**base.env(), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    services.start(worker)
    return worker.name


def _online(pool: str) -> set[str]:
    with get_client(sync_client=True) as client:
        return {w.name for w in client.read_workers_for_work_pool(pool)
                if w.status == WorkerStatus.ONLINE}


def test_two_workers_share_the_units_and_none_is_done_twice(prefect_service, s3_prefix,
                                                            tiny_models):
    params = _params(s3_prefix, tiny_models, datasets=("cc3m",), shards_per_unit=1)
    _raw_dataset(params, "cc3m", shards=4, per_shard=3)
    pool = f"fanout-{uuid.uuid4().hex[:8]}"
    names = [f"{pool}-a", f"{pool}-b"]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployments = deploy_pool(pool)
    started: list[str] = []
    try:
        started += [_start_worker(pool, name) for name in names]
        deadline = time.monotonic() + 90
        while _online(pool) != set(names):
            assert time.monotonic() < deadline, f"workers not online: {_online(pool)}"
            time.sleep(1)
        envelope_uri = f"{s3_prefix}/pipeline/encode.json"
        text, sha256 = dumps_resolved(params)
        run = run_deployment(f"micro-budget-step/{pool}", timeout=600, parameters={
            "step": "encode", "envelope_uri": envelope_uri, "params_yaml": text,
            "params_sha256": sha256})
        assert run.state is not None and run.state.is_completed(), run.state
    finally:
        services.stop_all(started, term_s=8.0, int_s=3.0)
        with get_client(sync_client=True) as client:
            for deployment_id in deployments:
                client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)

    result = s3.get_json(envelope_uri)["result"]
    chunks = result["cc3m"]["chunks"]
    # Two chunks, each run by a different worker: chunk 0 in the step's flow run, chunk 1 in a
    # micro-budget-units flow run of its own.
    assert len(chunks) == 2
    assert {c["worker"] for c in chunks} == set(names)
    assert chunks[0]["flow_run"] == str(run.id) and chunks[1]["flow_run"] != str(run.id)
    assert [c["units"] for c in chunks] == [[0, 2], [1, 3]]
    with get_client(sync_client=True) as client:
        child = client.read_flow_run(chunks[1]["flow_run"])
        assert child.parent_task_run_id is not None
    # deploy_pool registers the step flow, then the units flow.
    assert str(child.deployment_id) == deployments[1]
    # No unit done twice: every shard encoded once in this run, every sample key once.
    summary = result["cc3m"]
    assert summary["samples_encoded_this_run"] == 12 and summary["shards"] == 4
    manifest = read_manifest(latent_prefix(params, "cc3m"))
    keys = Counter(k for shard in manifest.shards for k, _ in iter_shard(shard.uri))
    assert len(keys) == 12 and max(keys.values()) == 1
