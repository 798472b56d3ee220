"""`micro-budget`: download -> caption -> encode -> train -> evaluate -> report.

Deployed as `micro-budget/full` on the `cpu` pool. Each step runs as a `micro-budget-step` flow
run through the deployment of the pool that fits it (GPU steps on `gpu`), so a step can fail and
be retried on its own; a rerun of the pipeline resumes (manifests skip complete shards, training
resumes from its latest checkpoint, evaluation reuses cached samples).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_client, get_run_logger, task
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.failures import StepFailed, failed_state
from infra import s3
from tasks.check import preflight, render
from tasks.plan import OverBudget, check_budget, plan
from tasks.plan import render as render_plan
from tasks.params import load_params
from tasks.report.ledger import GPU_STEPS, STEPS
from tasks.report.step import report_pipeline
from tasks.report.tracking import fail_pipeline_run, start_pipeline_run, supersede_stale_runs

STEP_FLOW = "micro-budget-step"


@task(retries=2, retry_delay_seconds=5)
def open_pipeline_run(profile: str | None, params_path: str | None, name: str,
                      folder: str) -> tuple[str, list[dict[str, str]]]:
    """The parent MLflow run of this attempt, and the earlier attempts it supersedes."""
    params = load_params(params_path, profile)
    run_id = start_pipeline_run(params, name, tags={"driver": "prefect",
                                                    "pipeline_folder": folder,
                                                    "prefect_flow_run": str(flow_run.get_id())})
    return run_id, supersede_stale_runs(params, run_id)


def run_step_on_pool(step: str, envelope_uri: str, profile: str | None,
                     params_path: str | None, parent_run_id: str) -> dict[str, Any]:
    """Start the step's flow run on its pool, wait for it, and read back its envelope."""
    pool = "gpu" if step in GPU_STEPS else "cpu"
    child = run_deployment(f"{STEP_FLOW}/{pool}", timeout=0,
                           parameters={"step": step, "envelope_uri": envelope_uri,
                                       "profile": profile, "params_path": params_path,
                                       "parent_run_id": parent_run_id})
    state = wait_logging_progress(step, child.id, child.name)
    if state is not None and state.is_failed() and state.message:
        # The step's one line (cause and fix); its traceback is in that flow run's log.
        raise StepFailed(f"step {step} failed: {' '.join(state.message.split())}")
    if state is None or not state.is_completed():
        raise StepFailed(f"step {step} ended {state.name if state else 'unknown'} (flow run "
                         f"{child.name}): see its log, then rerun the pipeline to resume")
    return s3.get_json(envelope_uri)


def wait_logging_progress(step: str, run_id: Any, name: str, every_s: float = 30.0,
                          poll_s: float = 2.0) -> Any:
    """The step flow run's final state; meanwhile a log line every `every_s` seconds with its
    state and elapsed time, so `prefect deployment run micro-budget/full --watch` (which shows
    this flow's logs) tells where the pipeline is."""
    logger = get_run_logger()
    started = last = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                return state
            if time.monotonic() - last >= every_s:
                last = time.monotonic()
                logger.info("step %s: %s for %.0f s (flow run %s)", step,
                            state.name if state else "pending", last - started, name)
            time.sleep(poll_s)


@flow(name="micro-budget", log_prints=True)
def pipeline(profile: str | None = None, params_path: str | None = None,
             steps: list[str] | None = None, allow_over_budget: bool = False) -> dict[str, Any]:
    """The whole recipe on the profile in params.yaml (or `profile`); `steps` picks a subset.

    Refuses to start when the sections disagree (the preflight) or when the projected bill
    exceeds cost.budget_usd, unless `allow_over_budget`."""
    logger = get_run_logger()
    params = load_params(params_path, profile)
    # Disagreeing sections fail here, before any data moves or any GPU is paid for.
    logger.info("%s", render(preflight(params), params.train.gpu_memory_gib))
    logger.info("%s", render_plan(params, plan(params)))
    chosen = steps or list(STEPS)
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown steps {unknown}; steps: {list(STEPS)}")
    name = flow_run.get_name() or "local"
    folder = params.storage.uri(params.storage.pipeline_prefix, flow_run.get_id() or name)
    parent, previous = open_pipeline_run(profile, params_path, f"{params.profile}-{name}",
                                         folder)
    envelopes, current = [], "budget"
    try:
        check_budget(params, allow_over_budget)
        for step in (s for s in STEPS if s in chosen):
            current = step
            logger.info("step %s starting (%d of %d)", step, chosen.index(step) + 1,
                        len(chosen))
            envelopes.append(run_step_on_pool(step, f"{folder}/{step}.json", profile,
                                              params_path, parent))
            logger.info("step %s done in %.1f s", step, envelopes[-1]["seconds"])
    except BaseException as err:
        # The MLflow parent run ends FAILED with the step that stopped it, never RUNNING.
        fail_pipeline_run(parent, current, str(err))
        # The flow run ends with one line (cause and fix) when there is one; a bug re-raises.
        state = failed_state(err, stops=(OverBudget,)) if isinstance(err, Exception) else None
        if state is None:
            raise
        return state
    result = report_pipeline(params, envelopes, parent, previous)
    print(result["markdown"])
    return {k: v for k, v in result.items() if k != "markdown"}
