"""Caption step: the body `run(params, driver)` that the CLI/DVC and the flow both call, and
the unit protocol of the fan-out.

A dataset's raw shards are shared over the driver's machines (the flow: the pool's online
workers, flows/units.py; the CLI: this one), then one process per device
(tasks/common/fanout.py): device i takes every i-th shard and loads the captioner once, on first
use.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.caption import run as caption_run
from tasks.common.driver import Driver, most_devices, unit_results, units_summary
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


def run(params: Params, driver: Driver) -> dict[str, Any]:
    """Every dataset the section names: captioned, or recorded as skipped with the reason.
    SA-1B samples left without captions are counted and skipped by encode."""
    if not params.caption.enabled:
        return {"skipped": "caption.enabled is false: SA-1B samples without captions are "
                           "counted and skipped by encode"}
    out: dict[str, Any] = {}
    for dataset in params.caption.datasets:
        if dataset not in params.download.enabled():
            out[dataset] = {"skipped": f"download.{dataset} is disabled"}
            continue
        chunks = driver.share_units("caption", params, dataset,
                                    driver.task(plan_caption, params, dataset))
        summary = caption_run.summarize(dataset, unit_results(chunks))
        driver.publish(f"caption-{dataset}", caption_run.summary_markdown(summary),
                       f"Caption summary of {dataset}")
        out[dataset] = units_summary(summary, chunks)
    return {**out, "gpus": most_devices(out)}
