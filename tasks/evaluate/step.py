"""Evaluate step: Prefect task + `run(params)` for the CLI and DVC.

The work lives in plain functions (score.py, tracking.py); this module only adds retries, the
Prefect markdown artifact and the MLflow hand-off.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.evaluate.encoders import load_encoders
from tasks.evaluate.score import evaluate
from tasks.evaluate.tracking import log_result, result_markdown, start_run
from tasks.params import Params


def evaluate_and_log(params: Params, checkpoint_uri: str, run_id: str | None = None
                     ) -> dict[str, Any]:
    """Evaluate, log to MLflow (run_id, or a new evaluation run) and return the result."""
    evaluation = evaluate(params, checkpoint_uri, load_encoders)
    run_id = run_id or start_run(f"evaluate-{evaluation.result['checkpoint_digest']}")
    log_result(run_id, evaluation.result, evaluation.grid_png)
    return {**evaluation.result, "mlflow_run_id": run_id}


@task(name="evaluate-checkpoint", retries=2, retry_delay_seconds=30, tags=["gpu"])
def evaluate_checkpoint(params: Params, checkpoint_uri: str, run_id: str | None = None
                        ) -> dict[str, Any]:
    """COCO FID (+ CLIP score) of one checkpoint; generation resumes from cached batches."""
    result = evaluate_and_log(params, checkpoint_uri, run_id)
    create_markdown_artifact(key=f"evaluate-{result['checkpoint_digest']}",
                             markdown=result_markdown(result),
                             description="COCO-2014 val FID / CLIP score")
    return result


def run(params: Params) -> dict[str, Any]:
    """The whole step for the CLI/DVC: evaluates evaluate.checkpoint, else the final one."""
    if not params.evaluate.enabled:
        return {"skipped": "evaluate.enabled is false"}
    checkpoint = params.evaluate.checkpoint
    if checkpoint is None:
        from tasks.train.step import final_checkpoint  # the last training stage's output

        checkpoint = final_checkpoint(params)
    return evaluate_and_log(params, checkpoint)
