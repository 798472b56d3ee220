"""Encode step entry points: `run` for the CLI and DVC; Prefect tasks for the flow.

The flow plans units per dataset, maps `encode_shards` over them on the gpu pool (each unit a
task run, so several GPU workers encode in parallel), then `finish_encode` writes the manifest.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.encode.run import encode_dataset, encode_unit, finish, plan
from tasks.params import Params


@task(retries=1, retry_delay_seconds=10, task_run_name="plan-encode-{dataset}")
def plan_encode(params: Params, dataset: str) -> list[list[str]]:
    return plan(params, dataset)


@task(retries=2, retry_delay_seconds=30, tags=["gpu"])
def encode_shards(params: Params, dataset: str, unit: list[str]) -> dict[str, Any]:
    """Encode one unit of raw shards (resumable: committed shards are skipped)."""
    return encode_unit(params, dataset, unit)


@task(retries=2, retry_delay_seconds=10, task_run_name="finish-encode-{dataset}")
def finish_encode(params: Params, dataset: str, units: list[dict[str, Any]]) -> dict[str, Any]:
    return finish(params, dataset, units)


def run(params: Params) -> dict[str, Any]:
    return {dataset: encode_dataset(params, dataset) for dataset in params.encode.datasets}
