"""`micro-budget-node`: one node of a multi-node training stage, on a worker of the gpu pool.

With `train.nodes: N` the train step (running on one gpu worker) is node 0: it picks a free port,
publishes its address to S3, starts N - 1 flow runs of this flow through the
`micro-budget-node/<pool>` deployment, and runs its own torchrun. Each node flow run reads the
address and runs torchrun with its node rank; all ranks meet at node 0's store (torchrun's static
rendezvous: node ranks are fixed, so global rank 0, which writes checkpoints, MLflow and the
summary, is always on node 0). One gpu worker per node (`--limit 1`) puts each node on its own
machine. A node that dies breaks its peers' collectives, every node's torchrun exits non-zero,
the stage fails naming each node, and the rerun resumes from the latest checkpoint.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from typing import Any

from prefect import flow
from prefect.deployments import run_deployment

from flows.units import pool_and_workers, wait_for
from infra import s3
from tasks.params import Params, dumps_resolved, loads_resolved
from tasks.train.step import (Endpoint, ProgressArtifact, free_port, node_address,
                              run_stage)

NODE_FLOW = "micro-budget-node"


def _wait_for_endpoint(uri: str, timeout_s: float = 600.0) -> Endpoint:
    deadline = time.monotonic() + timeout_s
    while not s3.exists(uri):
        if time.monotonic() > deadline:
            raise TimeoutError(f"node 0 never published its rendezvous address at {uri}")
        time.sleep(1.0)
    return Endpoint(**s3.get_json(uri))


@flow(name=NODE_FLOW, flow_run_name="{stage}-node{node_rank}")
def train_node(stage: str, node_rank: int, params_yaml: str, params_sha256: str,
               endpoint_uri: str, result_uri: str, parent_run_id: str | None = None) -> str:
    """Run this node's torchrun of a stage; writes what the node held to `result_uri`.

    `params_yaml` and `params_sha256` are node 0's params (tasks.params.dumps_resolved)."""
    params = loads_resolved(params_yaml, params_sha256)
    endpoint = _wait_for_endpoint(endpoint_uri)
    s3.put_json(result_uri, run_stage(params, stage, parent_run_id, node_rank, endpoint))
    return result_uri


def train_stage_on_nodes(params: Params, stage: str,
                         parent_run_id: str | None = None) -> dict[str, Any]:
    """One stage over train.nodes nodes; returns rank 0's summary with every node's record.

    Raises after every node has ended when any failed, naming each failed node."""
    pool, _ = pool_and_workers()
    if pool is None:
        raise RuntimeError("a multi-node stage runs from a flow on a work pool (the train step "
                           "of micro-budget/full), not from the command line")
    nodes = params.train.nodes
    folder = params.storage.uri(params.storage.runs_prefix, params.train.run_name,
                                "_nodes", f"{stage}-{uuid.uuid4().hex[:12]}")
    endpoint = Endpoint(node_address(), free_port())
    s3.put_json(s3.join(folder, "endpoint.json"), asdict(endpoint))
    text, sha256 = dumps_resolved(params)
    remote = []
    for rank in range(1, nodes):
        uri = s3.join(folder, f"node-{rank}.json")
        run = run_deployment(f"{NODE_FLOW}/{pool}", timeout=0, parameters={
            "stage": stage, "node_rank": rank, "params_yaml": text, "params_sha256": sha256,
            "endpoint_uri": s3.join(folder, "endpoint.json"), "result_uri": uri,
            "parent_run_id": parent_run_id})
        remote.append((rank, run.id, uri))
    errors, result = [], None
    try:
        result = run_stage(params, stage, parent_run_id, 0, endpoint,
                           progress=ProgressArtifact())
    except Exception as err:  # the other nodes are still waited for, then all errors raised
        errors.append(f"node 0: {err}")
    states = wait_for([run_id for _, run_id, _ in remote])
    records = []
    for rank, run_id, uri in remote:
        if states[run_id].is_completed():
            records.append(s3.get_json(uri))
        else:
            errors.append(f"node {rank} (flow run {run_id}) ended {states[run_id].name}")
    if errors or result is None:
        raise RuntimeError(f"training stage {stage} failed on {nodes} nodes: "
                           f"{'; '.join(errors)}; rerun to resume from its latest checkpoint")
    result["nodes"] += records
    log_node_metrics(result)
    return result


def log_node_metrics(result: dict[str, Any]) -> None:
    """Per-node wall time and peak memory on the stage's MLflow run."""
    run_id = result.get("mlflow_run_id")
    if not run_id:
        return
    from infra import tracking

    client = tracking.client()
    for node in result["nodes"]:
        rank = node["node_rank"]
        client.log_metric(run_id, f"node{rank}/held_seconds", node["held_seconds"])
        client.log_metric(run_id, f"node{rank}/peak_rss_gib", node["peak_rss_gib"])
