"""`micro-budget-step`: one pipeline step as its own flow run, on the work pool that fits it.

The pipeline flow starts this flow through the `micro-budget-step/cpu` or `/gpu` deployment, so
GPU steps run on GPU workers. Caption and encode split their units over the pool's workers
(flows/units.py) and each worker over its devices (tasks/common/fanout.py); training runs
stage by stage under torchrun. Each step then writes its envelope (result, wall time and where
its attempts are recorded: tasks/attempt.py) to S3 for the report and returns the URI.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import flow
from prefect.states import State

from flows.failures import failed_state
from infra import s3
from tasks.attempt import run_attempt
from tasks.params import Params, loads_resolved


def download(params: Params, parent_run_id: str | None) -> dict[str, Any]:
    from tasks.download.step import download_dataset

    # Called in turn in the flow's main thread: img2dataset installs signal handlers, which
    # Python allows only there. At scale each dataset is its own distributed img2dataset job.
    return {name: download_dataset(params, name) for name in params.download.enabled()}


def caption(params: Params, parent_run_id: str | None) -> dict[str, Any]:
    if not params.caption.enabled:
        return {"skipped": "caption.enabled is false: SA-1B samples without captions are "
                           "counted and skipped by encode"}
    from flows.units import placement, share_units, unit_results
    from tasks.caption.step import finish_caption, plan_caption

    out: dict[str, Any] = {}
    gpus = 1
    for dataset in params.caption.datasets:
        if dataset not in params.download.enabled():
            out[dataset] = {"skipped": f"download.{dataset} is disabled"}
            continue
        # Shards over the pool's online workers, then over each worker's devices.
        chunks = share_units("caption", params, dataset, plan_caption(params, dataset))
        out[dataset] = {**finish_caption(params, dataset, unit_results(chunks)),
                        "chunks": placement(chunks)}
        gpus = max(gpus, sum(c["devices"] for c in chunks))
    return {**out, "gpus": gpus}


def encode(params: Params, parent_run_id: str | None) -> dict[str, Any]:
    from flows.units import placement, share_units, unit_results
    from tasks.encode.run import encoded_datasets, not_read
    from tasks.encode.step import finish_encode, plan_encode

    out: dict[str, Any] = {}
    gpus = 1
    for dataset in params.encode.datasets:
        if dataset not in encoded_datasets(params):
            out[dataset] = not_read(params, dataset)
            continue
        # Units over the pool's online workers, then over each worker's devices.
        chunks = share_units("encode", params, dataset, plan_encode(params, dataset))
        out[dataset] = {**finish_encode(params, dataset, unit_results(chunks)),
                        "chunks": placement(chunks)}
        gpus = max(gpus, sum(c["devices"] for c in chunks))
    return {**out, "gpus": gpus}


def train(params: Params, parent_run_id: str | None) -> dict[str, Any]:
    from tasks.train.step import export_task, summarize, train_stage

    if params.train.nodes > 1:
        from flows.nodes import train_stage_on_nodes as run  # one flow run per other node
    else:
        run = train_stage
    summary = summarize({stage.name: run(params, stage.name, parent_run_id)
                         for stage in params.train.stages})
    return {**summary, "diffusers": export_task(params)}


def evaluate(params: Params, parent_run_id: str | None) -> dict[str, Any]:
    from tasks.evaluate.step import evaluate_checkpoint, evaluate_stages

    if not params.evaluate.enabled:
        return {"skipped": "evaluate.enabled is false"}
    return evaluate_stages(params, evaluate_checkpoint)


STEPS: dict[str, Callable[[Params, str | None], dict[str, Any]]] = {
    "download": download, "caption": caption, "encode": encode, "train": train,
    "evaluate": evaluate,
}


@flow(name="micro-budget-step", flow_run_name="{step}")
def run_step(step: str, envelope_uri: str, params_yaml: str, params_sha256: str,
             parent_run_id: str | None = None) -> str | State:
    """Run one step and write its envelope to `envelope_uri`; returns that URI.

    `params_yaml` and `params_sha256` are the params the pipeline approved
    (tasks.params.dumps_resolved): the step runs them whatever params.yaml this worker holds.

    A missing file, an unreachable host, a refused token or credentials or a full disk ends the
    run Failed with one line (cause and fix) as its state message, the traceback in its log."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {list(STEPS)}")
    try:
        params = loads_resolved(params_yaml, params_sha256)
        s3.put_json(envelope_uri,
                    run_attempt(params, step, lambda: STEPS[step](params, parent_run_id)))
    except Exception as err:  # noqa: BLE001 - anything not operational is re-raised
        state = failed_state(err)
        if state is None:
            raise
        return state
    return envelope_uri
