"""Encode step: the body `run(params, driver)` that the CLI/DVC and the flow both call, and
the unit protocol of the fan-out.

A dataset's units (lists of raw shards, see tasks.encode.run.plan) are shared over the driver's
machines (the flow: the pool's online workers, flows/units.py; the CLI: this one), then one
process per device (tasks/common/fanout.py): device i takes every i-th unit and loads the
encoders once. `finish_encode` then rebuilds the manifest from the committed shards.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.common.driver import Driver, most_devices, unit_results, units_summary
from tasks.common.encoders import Encoders, load
from tasks.encode.run import (encode_unit, encoded_datasets, finish, not_read, plan,
                              resolution_plan)
from tasks.params import Params


def load_models(params: Params) -> Encoders:
    return load(params.encode)


def process_unit(models: Any, params: Params, dataset: str, unit: list[str]) -> dict[str, Any]:
    """Encode one unit of raw shards (resumable: committed shards are skipped)."""
    return encode_unit(params, dataset, unit, models)


@task(retries=1, retry_delay_seconds=10, task_run_name="plan-encode-{dataset}")
def plan_encode(params: Params, dataset: str) -> list[list[str]]:
    return plan(params, dataset)


@task(retries=2, retry_delay_seconds=10, task_run_name="finish-encode-{dataset}")
def finish_encode(params: Params, dataset: str, units: list[dict[str, Any]]) -> dict[str, Any]:
    return finish(params, dataset, units)


def attempts_key(params: Params) -> tuple[str, str]:
    """Where this step's attempts are recorded (tasks/attempt.py): under the latents prefix,
    keyed by what names its latent shards (tasks/encode/run.py latent_shard_name) for every
    dataset it encodes: the encoders and their settings, the resolution plan, the raw shards
    and the caption key where captions apply."""
    from tasks.caption.keys import caption_key, captions_apply
    from tasks.common.keys import digest, model_fingerprint, without
    from tasks.common.shards import read_manifest, shards_digest
    from tasks.encode.run import EXECUTION_ONLY, plan_key, raw_prefix

    def raw(dataset: str) -> str | None:
        manifest = read_manifest(raw_prefix(params, dataset))
        return shards_digest(manifest) if manifest is not None else None

    enc = params.encode
    return params.storage.latents_prefix, digest({
        "encode": without(enc, *EXECUTION_ONLY),
        "models": [model_fingerprint(enc.vae), model_fingerprint(enc.text_encoder)],
        "datasets": {d: {"plan": plan_key(resolution_plan(params, d)), "raw": raw(d),
                         "captions": caption_key(params.caption)
                         if captions_apply(params, d) else None}
                     for d in encoded_datasets(params)}})


def run(params: Params, driver: Driver) -> dict[str, Any]:
    """Every dataset the section names: encoded, or recorded as not read by any stage."""
    out: dict[str, Any] = {}
    for dataset in params.encode.datasets:
        if dataset not in encoded_datasets(params):
            out[dataset] = not_read(params, dataset)
            continue
        chunks = driver.share_units("encode", params, dataset,
                                    driver.task(plan_encode, params, dataset))
        out[dataset] = units_summary(
            driver.task(finish_encode, params, dataset, unit_results(chunks)), chunks)
    return {**out, "gpus": most_devices(out)}
