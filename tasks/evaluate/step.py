"""Evaluate step: the body `run(params, driver)` that the CLI/DVC and the flow both call.

The work lives in plain functions (score.py, tracking.py); this module only adds retries, the
published summary and the MLflow hand-off.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task

from tasks.common.driver import Driver
from tasks.common.generation import load_encoders
from tasks.evaluate.score import evaluate, with_resolution
from tasks.evaluate.tracking import log_result, result_markdown, start_run
from tasks.params import Params


def evaluate_and_log(params: Params, checkpoint_uri: str, run_id: str | None = None,
                     grid_path: Path | None = None) -> dict[str, Any]:
    """Evaluate, log to MLflow (run_id, or a new evaluation run) and return the result;
    `grid_path` also gets the sample grid (the DVC plots of the CLI path)."""
    evaluation = evaluate(params, checkpoint_uri, load_encoders)
    run_id = run_id or start_run(f"evaluate-{evaluation.result['checkpoint_digest']}")
    log_result(run_id, evaluation.result, evaluation.grid_png)
    if grid_path is not None and evaluation.grid_png:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid_path.write_bytes(evaluation.grid_png)
    return {**evaluation.result, "mlflow_run_id": run_id}


@task(name="evaluate-checkpoint", retries=2, retry_delay_seconds=30, tags=["gpu"])
def evaluate_checkpoint(params: Params, checkpoint_uri: str, run_id: str | None = None,
                        grid_path: Path | None = None) -> dict[str, Any]:
    """COCO FID (+ CLIP score) of one checkpoint; generation resumes from cached batches."""
    return evaluate_and_log(params, checkpoint_uri, run_id, grid_path)


def score_plan(params: Params) -> list[tuple[str, Params]]:
    """(stage, params to score it with): evaluate.extra_stages, each at its own training
    resolution, then evaluate.stage (default: the last) at evaluate.resolution (null: that
    stage's training resolution)."""
    ev = params.evaluate
    plan = []
    for name in ev.extra_stages:
        resolution = params.train.stage(name).resolution
        plan.append((name, replace(params, evaluate=replace(ev, stage=name,
                                                            resolution=resolution))))
    return [*plan, (ev.stage or params.train.stages[-1].name, with_resolution(params))]


def combine(results: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """The main stage's result, with every scored stage's headline numbers under by_stage."""
    keep = ("checkpoint", "fid", "clip_score", "protocol_hash", "mlflow_run_id")
    by_stage = {name: {k: r.get(k) for k in keep} | {"resolution": r["protocol"]["resolution"]}
                for name, r in results.items()}
    return {**results[main], "stage": main, "by_stage": by_stage}


def evaluate_stages(params: Params, score) -> dict[str, Any]:
    """Score evaluate.checkpoint if given, else the final checkpoint of every planned stage;
    `score(params, checkpoint_uri)` does one evaluation."""
    if params.evaluate.checkpoint is not None:
        return score(params, params.evaluate.checkpoint)
    from tasks.train.keys import final_checkpoint

    plan = score_plan(params)
    results = {name: score(p, final_checkpoint(p)) for name, p in plan}
    return combine(results, plan[-1][0])


def attempts_key(params: Params) -> tuple[str, str]:
    """Where this step's attempts are recorded (tasks/attempt.py): under the runs prefix, keyed
    by the evaluate section (less its device) and the checkpoints it scores (the stages' keys,
    tasks/train/keys.py, or evaluate.checkpoint)."""
    from tasks.common.keys import digest, without
    from tasks.train.keys import stage_key

    ev = params.evaluate
    scored = ev.checkpoint if ev.checkpoint is not None else {
        s.name: stage_key(params, s.name) for s in params.train.stages}
    return params.storage.runs_prefix, digest({"evaluate": without(ev, "device"),
                                               "checkpoints": scored})


def run(params: Params, driver: Driver) -> dict[str, Any]:
    """Every scored stage, each result published; with DVC's outputs each stage's sample grid
    also goes to <out_dir>/plots/samples/<stage>.png for `dvc plots show`."""
    if not params.evaluate.enabled:
        return {"skipped": "evaluate.enabled is false"}

    def score(scored: Params, checkpoint_uri: str) -> dict[str, Any]:
        grid = None
        if driver.dvc_outputs:
            name = scored.evaluate.stage or scored.train.stages[-1].name
            grid = params.storage.out_path(f"plots/samples/{name}.png")
        result = driver.task(evaluate_checkpoint, scored, checkpoint_uri, None, grid)
        driver.publish(f"evaluate-{result['checkpoint_digest']}", result_markdown(result),
                       "COCO-2014 val FID / CLIP score")
        return result

    return evaluate_stages(params, score)
