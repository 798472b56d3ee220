"""Caption step entry points: `run` for the CLI and DVC; Prefect tasks for the flow.

The flow maps `caption_shard` over a dataset's raw shards on the `gpu` pool (each worker loads
the model once and keeps it), then `finish_caption` publishes the summary as an artifact.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.caption import run as caption_run
from tasks.params import Params


@task(retries=1, retry_delay_seconds=10, task_run_name="plan-caption-{dataset}")
def plan_caption(params: Params, dataset: str) -> list[str]:
    return caption_run.plan(params, dataset)


@task(retries=2, retry_delay_seconds=30, tags=["gpu"])
def caption_shard(params: Params, dataset: str, uri: str) -> dict[str, Any]:
    """Caption one raw shard (resumable: a shard with a sidecar is skipped)."""
    return caption_run.caption_shard(params, dataset, uri)


@task(task_run_name="finish-caption-{dataset}")
def finish_caption(params: Params, dataset: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    summary = caption_run.summarize(dataset, shards)
    create_markdown_artifact(key=f"caption-{dataset}", markdown=caption_run.summary_markdown(summary),
                             description=f"Caption summary of {dataset}")
    return summary


def run(params: Params) -> dict[str, Any]:
    """The whole step in this process; skipped with a reason when disabled."""
    if not params.caption.enabled:
        return {"skipped": "caption.enabled is false"}
    summaries = {d: caption_run.caption_dataset(params, d) for d in params.caption.datasets
                 if d in params.download.enabled()}
    for summary in summaries.values():
        print(caption_run.summary_markdown(summary), file=sys.stderr)
    return summaries
