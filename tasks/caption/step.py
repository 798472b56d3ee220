"""Caption step entry points: `run` for the CLI and DVC; the unit protocol of the fan-out.

A dataset's raw shards run one process per device (tasks/common/fanout.py): device i of a worker
takes every i-th shard and loads the captioner once, on first use. In the flow, several gpu
workers share the shards first (flows/units.py); `finish_caption` publishes the summary.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.caption import run as caption_run
from tasks.common.fanout import run_on_devices
from tasks.params import Params


def load_models(params: Params) -> Any:
    from tasks.caption.llava import load

    return load(params.caption)


def process_unit(models: Any, params: Params, dataset: str, uri: str) -> dict[str, Any]:
    """Caption one raw shard (resumable: a shard with a sidecar is skipped). `models` is only
    touched when the shard has samples to caption with LLaVA."""
    return caption_run.caption_shard(params, dataset, uri, models)


@task(retries=1, retry_delay_seconds=10, task_run_name="plan-caption-{dataset}")
def plan_caption(params: Params, dataset: str) -> list[str]:
    return caption_run.plan(params, dataset)


@task(task_run_name="finish-caption-{dataset}")
def finish_caption(params: Params, dataset: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    summary = caption_run.summarize(dataset, shards)
    create_markdown_artifact(key=f"caption-{dataset}", markdown=caption_run.summary_markdown(summary),
                             description=f"Caption summary of {dataset}")
    return summary


def caption_on_devices(params: Params, dataset: str) -> dict[str, Any]:
    """The whole dataset on this machine's devices."""
    records = run_on_devices(__name__, params, dataset, caption_run.plan(params, dataset))
    # The devices that ran a unit: what the ledger prices (tasks/common/cost.py).
    return {**caption_run.summarize(dataset, [r["result"] for r in records]),
            "devices": len({r["device"] for r in records}) or 1}


def attempts_key(params: Params) -> tuple[str, str]:
    """Where this step's attempts are recorded (tasks/attempt.py): under the raw prefix, keyed
    by the caption key and the raw shards of each dataset it captions."""
    from tasks.caption.keys import caption_key
    from tasks.common.keys import digest
    from tasks.common.shards import read_manifest, shards_digest

    raw = {}
    for dataset in [d for d in params.caption.datasets if d in params.download.enabled()]:
        manifest = read_manifest(caption_run.raw_prefix(params, dataset))
        raw[dataset] = shards_digest(manifest) if manifest is not None else None
    return params.storage.raw_prefix, digest({"captions": caption_key(params.caption),
                                              "raw": raw})


def run(params: Params) -> dict[str, Any]:
    """The whole step in this process and its device children; skipped with a reason when
    disabled."""
    if not params.caption.enabled:
        return {"skipped": "caption.enabled is false"}
    summaries = {d: caption_on_devices(params, d) for d in params.caption.datasets
                 if d in params.download.enabled()}
    for summary in summaries.values():
        print(caption_run.summary_markdown(summary), file=sys.stderr)
    return {**summaries, "gpus": max((s["devices"] for s in summaries.values()), default=1)}
