"""`micro-budget`: download -> caption -> encode -> train -> evaluate -> report.

Deployed as `micro-budget/full` on the `cpu` pool. Each step runs as a `micro-budget-step` flow
run through the deployment of the pool that fits it (GPU steps on `gpu`), so a step can fail and
be retried on its own; a rerun of the pipeline resumes (manifests skip complete shards, training
resumes from its latest checkpoint, evaluation reuses cached samples).
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import flow, get_client, get_run_logger, task
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import State

from flows.failures import StepFailed, failed_state
from infra import s3
from tasks.check import preflight, render
from tasks.plan import OverBudget, check_budget, plan
from tasks.plan import render as render_plan
from flows.steps import OnPrefect
from tasks.params import Params, dumps_resolved, load_params
from tasks.report.tracking import fail_pipeline_run, start_pipeline_run, supersede_stale_runs
from tasks.steps import PRICED
from tasks.steps import step as table_entry

STEP_FLOW = "micro-budget-step"
LEASE_S = 60.0  # s: the shortest lease the Prefect server grants on a concurrency slot


@task(retries=2, retry_delay_seconds=5)
def open_pipeline_run(params: Params, name: str, folder: str) -> tuple[str, list[dict[str, str]]]:
    """The parent MLflow run of this attempt, and the earlier attempts it supersedes."""
    run_id = start_pipeline_run(params, name, tags={"driver": "prefect",
                                                    "pipeline_folder": folder,
                                                    "prefect_flow_run": str(flow_run.get_id())})
    return run_id, supersede_stale_runs(params, run_id)


def run_step_on_pool(step: str, envelope_uri: str, params: Params,
                     parent_run_id: str) -> dict[str, Any]:
    """Start the step's flow run on its pool, wait for it, and read back its envelope.

    The step gets the approved params as text with its hash, not a path: a worker on another
    machine, or one whose checkout was pulled since, trains what the preflight and the budget
    check approved here."""
    text, sha256 = dumps_resolved(params)
    child = run_deployment(f"{STEP_FLOW}/{table_entry(step).pool}", timeout=0,
                           parameters={"step": step, "envelope_uri": envelope_uri,
                                       "params_yaml": text, "params_sha256": sha256,
                                       "parent_run_id": parent_run_id})
    state = wait_logging_progress(step, child.id, child.name)
    if state is not None and state.is_failed() and state.message:
        # The step's one line (cause and fix); its traceback is in that flow run's log.
        raise StepFailed(f"step {step} failed: {' '.join(state.message.split())}")
    if state is None or not state.is_completed():
        raise StepFailed(f"step {step} ended {state.name if state else 'unknown'} (flow run "
                         f"{child.name}): see its log, then rerun the pipeline to resume")
    return s3.get_json(envelope_uri)


def step_progress(client: Any, run_id: Any) -> str | None:
    """The description of the step flow run's latest progress artifact (a training stage's
    step of total, images/s and ETA: tasks.train.step.ProgressArtifact), None before one."""
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterType,
                                                FlowRunFilter, FlowRunFilterId)
    from prefect.client.schemas.sorting import ArtifactSort

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
        sort=ArtifactSort.UPDATED_DESC, limit=1)
    return found[0].description if found else None


def announce(kind: str, step: str, text: str) -> None:
    """Log `text` and emit it as a `micro-budget.step.<kind>` event of this flow run, named
    `text`: `prefect deployment run --watch` prints a flow run's events (event and resource
    name), not its logs."""
    get_run_logger().info("%s", text)
    run_id = flow_run.get_id()
    if run_id:
        emit_event(event=f"micro-budget.step.{kind}",
                   resource={"prefect.resource.id": f"micro-budget.step.{run_id}.{step}",
                             "prefect.resource.name": text},
                   related=[{"prefect.resource.id": f"prefect.flow-run.{run_id}",
                             "prefect.resource.role": "flow-run"}])


def wait_logging_progress(step: str, run_id: Any, name: str, every_s: float = 30.0,
                          quiet_s: float = 10.0, poll_s: float = 2.0) -> Any:
    """The step flow run's final state; meanwhile its state, elapsed time and progress
    (`announce`d: a log line and an event) at least every `every_s` seconds, and when the
    progress has changed, at most every `quiet_s` seconds (always the last progress before the
    step ends). The step's own logs and events never reach a watcher of this flow run."""
    started = last = time.monotonic()
    said = None
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            final = state is not None and state.is_final()
            progress = step_progress(client, run_id)
            fresh = progress is not None and progress != said
            now = time.monotonic()
            if now - last >= every_s or (fresh and (final or now - last >= quiet_s)):
                last, said = now, progress
                announce("progress", step, f"step {step}: {progress + '; ' if progress else ''}"
                         f"{state.name if state else 'pending'} for {now - started:.0f} s "
                         f"(flow run {name})")
            if final:
                return state
            time.sleep(poll_s)


def run_lock(params: Params) -> str:
    """The Prefect global concurrency limit (1 slot) of a run's folder: pipeline runs that
    would write the same checkpoints, MLflow attempts and report take turns."""
    folder = f"{params.storage.bucket}.{params.storage.runs_prefix}.{params.train.run_name}"
    return "micro-budget-run-" + re.sub(r"[^A-Za-z0-9_.-]", ".", folder)


@contextmanager
def one_at_a_time(params: Params) -> Iterator[None]:
    """Hold the run's slot: a second pipeline run of the same run waits here until the first
    ends (then resumes from what the first left, mostly cached). The slot is a lease renewed
    while this flow runs: a killed run's slot frees itself within about
    LEASE_S + 15 s (the server's lease sweep), so a rerun after a crash waits that long."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = run_lock(params)
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name,
                                                                                limit=1))
        except ObjectAlreadyExists:
            pass
        busy = client.read_global_concurrency_limit_by_name(name).active_slots > 0
    if busy:
        announce("waiting", "all", f"another pipeline run of run {params.train.run_name} is in "
                                   f"progress (concurrency limit {name}): waiting for it to end")
    with concurrency(name, occupy=1, lease_duration=LEASE_S, strict=True):
        if busy:
            announce("waited", "all", f"the other pipeline run of run {params.train.run_name} "
                                      "has ended: starting")
        yield


@flow(name="micro-budget", log_prints=True)
def pipeline(profile: str | None = None, params_path: str | None = None,
             steps: list[str] | None = None, allow_over_budget: bool = False) -> dict[str, Any]:
    """The whole recipe on the profile in params.yaml (or `profile`); `steps` picks a subset.

    Refuses to start when the sections disagree (the preflight) or when the projected bill
    exceeds cost.budget_usd, unless `allow_over_budget`."""
    logger = get_run_logger()
    # Read once, here: every step, chunk, node and rank receives these values as text.
    params = load_params(params_path, profile)
    # Disagreeing sections fail here, before any data moves or any GPU is paid for.
    logger.info("%s", render(preflight(params), params.train.gpu_memory_gib))
    logger.info("%s", render_plan(params, plan(params)))
    chosen = steps or list(PRICED)
    unknown = sorted(set(chosen) - set(PRICED))
    if unknown:
        raise ValueError(f"unknown steps {unknown}; steps: {list(PRICED)}")
    with one_at_a_time(params):
        return run_steps(params, chosen, allow_over_budget)


def run_steps(params: Params, chosen: list[str],
              allow_over_budget: bool) -> dict[str, Any] | State:
    """The chosen steps in order under one MLflow parent run, then the report."""
    name = flow_run.get_name() or "local"
    folder = params.storage.uri(params.storage.pipeline_prefix, flow_run.get_id() or name)
    parent, previous = open_pipeline_run(params, f"{params.profile}-{name}", folder)
    envelopes, current = [], "budget"
    try:
        check_budget(params, allow_over_budget)
        for step in (s for s in PRICED if s in chosen):
            current = step
            announce("started", step, f"step {step} starting ({chosen.index(step) + 1} of "
                                      f"{len(chosen)})")
            envelopes.append(run_step_on_pool(step, f"{folder}/{step}.json", params, parent))
            announce("finished", step, f"step {step} done in {envelopes[-1]['seconds']:.1f} s")
    except BaseException as err:
        # The MLflow parent run ends FAILED with the step that stopped it, never RUNNING.
        fail_pipeline_run(parent, current, str(err))
        # The flow run ends with one line (cause and fix) when there is one; a bug re-raises.
        state = failed_state(err, stops=(OverBudget,)) if isinstance(err, Exception) else None
        if state is None:
            raise
        return state
    # The report's body, as `python -m tasks report` runs it, on this run's envelopes.
    return table_entry("report").load()(params, OnPrefect(parent_run_id=parent,
                                                         finished=tuple(envelopes),
                                                         superseded=tuple(previous)))
