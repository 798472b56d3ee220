"""`micro-budget-units`: a chunk of a step's units, run by whichever worker of the pool is free.

The caption and encode steps split a dataset's units into one chunk per worker online in their
pool. The step's own flow run takes chunk 0; every other chunk is a flow run of this flow through
the `micro-budget-units/<pool>` deployment, and Prefect hands each flow run to exactly one worker
(a second worker's claim of the same run is rejected), so no unit is done twice. Inside a chunk,
the units run one process per device (tasks/common/fanout.py). A chunk writes its records to S3,
where the step reads them back once every chunk has ended.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from infra import s3
from tasks.common.fanout import run_chunk
from tasks.params import Params, dumps_resolved, loads_resolved
from tasks.steps import step as table_entry

UNITS_FLOW = "micro-budget-units"


@flow(name=UNITS_FLOW, flow_run_name="{step}-{dataset}-{chunk}", retries=1,
      retry_delay_seconds=10)
def run_units(step: str, dataset: str, chunk: int, indices: list[int], units: list[Any],
              params_yaml: str, params_sha256: str, result_uri: str) -> str:
    """Run one chunk of units and write its records to `result_uri`; returns that URI.

    `params_yaml` and `params_sha256` are the step's params (tasks.params.dumps_resolved), so
    the chunk runs what the pipeline approved, whatever params.yaml the worker's checkout holds."""
    params = loads_resolved(params_yaml, params_sha256)
    s3.put_json(result_uri, run_chunk(table_entry(step).module, params, dataset, indices, units))
    return result_uri


def pool_and_workers() -> tuple[str | None, int]:
    """The work pool this flow run runs on and how many of its workers are online; (None, 1)
    outside a deployment's flow run (the CLI, a test calling a step function)."""
    run_id = flow_run.get_id()
    if not run_id:
        return None, 1
    with get_client(sync_client=True) as client:
        pool = client.read_flow_run(run_id).work_pool_name
        if pool is None:
            return None, 1
        workers = client.read_workers_for_work_pool(pool)
    return pool, max(1, sum(w.status == WorkerStatus.ONLINE for w in workers))


def wait_for(run_ids: list[Any], poll_s: float = 2.0) -> dict[Any, Any]:
    """Final states of the given flow runs, polled until all have ended."""
    states: dict[Any, Any] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(run_ids):
            for run_id in run_ids:
                if run_id not in states:
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.is_final():
                        states[run_id] = state
            if len(states) < len(run_ids):
                time.sleep(poll_s)
    return states


def share_units(step: str, params: Params, dataset: str, units: list[Any]) -> list[dict[str, Any]]:
    """Run a dataset's units over the pool's online workers and their devices.

    Returns one chunk summary per worker share (tasks.common.fanout.run_chunk), chunk 0 first. Chunk c takes units c, c+k, c+2k, ... of k chunks; a failed chunk fails the
    step after every chunk has ended, naming the chunk's flow run and its error."""
    pool, workers = pool_and_workers()
    chunks = min(workers, len(units)) or 1
    shares = [list(range(c, len(units), chunks)) for c in range(chunks)]
    folder = params.storage.uri(params.storage.pipeline_prefix, "units", uuid.uuid4().hex)
    remote = []
    if chunks > 1:
        text, sha256 = dumps_resolved(params)
        for c, indices in enumerate(shares[1:], start=1):
            uri = s3.join(folder, f"{step}-{dataset}-{c}.json")
            run = run_deployment(f"{UNITS_FLOW}/{pool}", timeout=0, parameters={
                "step": step, "dataset": dataset, "chunk": c, "indices": indices,
                "units": [units[i] for i in indices], "params_yaml": text,
                "params_sha256": sha256, "result_uri": uri})
            remote.append((c, run.id, uri))
    errors, out = [], []
    try:
        out.append(run_chunk(table_entry(step).module, params, dataset, shares[0],
                             [units[i] for i in shares[0]]))
    except Exception as err:  # the other chunks are still waited for, then all errors raised
        errors.append(f"chunk 0 (this flow run): {err}")
    states = wait_for([run_id for _, run_id, _ in remote])
    for c, run_id, uri in remote:
        if not states[run_id].is_completed():
            errors.append(f"chunk {c} (flow run {run_id}) ended {states[run_id].name}: "
                          f"{states[run_id].message}")
        else:
            out.append(s3.get_json(uri))
    if errors:
        raise RuntimeError(f"{step} {dataset}: {'; '.join(errors)}; a rerun redoes only "
                           "uncommitted units")
    return out
