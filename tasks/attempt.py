"""One run of a step as one priced attempt: the bracket that both drivers put around a step's body
(tasks/cli.py for the CLI and DVC, flows/steps.py `run_step` for Prefect).

A data step (`attempts` in the step table, tasks/steps.py) records each attempt (tasks/common/attempts.py)
under a prefix keyed by what makes the step's outputs (its step module's `attempts_key(params)`:
the same params and inputs their names hash), so every attempt at the same outputs lands in one
listing:

    <raw>/_attempts/download-<key>/     each enabled dataset's download plan
    <raw>/_attempts/caption-<key>/      the caption key and the raw shards captioned
    <latents>/_attempts/encode-<key>/   the encoders and settings, resolution plans, raw shards
                                        and caption keys
    <runs>/_attempts/evaluate-<key>/    the evaluate section and the scored checkpoints

The envelope names that prefix; the report prices every attempt found there, so a failed or
killed attempt adds to the one that finishes and a cached rerun reports the cost of the outputs
it reused beside its own spend. Training records its attempts per stage, in the processes that
hold the devices (tasks/train/step.py); the report produces nothing to price.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable

from infra import s3
from tasks.common import attempts
from tasks.params import Params
from tasks.report.ledger import envelope
from tasks.steps import step as table_entry


def attempt_prefix(params: Params, step: str) -> str | None:
    """Where the attempts at this step's outputs are recorded (None: the step records none)."""
    entry = table_entry(step)
    if not entry.attempts:
        return None
    # By name, as tasks/cli.py imports a step: no stage depends on another step's code.
    root, key = importlib.import_module(entry.module).attempts_key(params)
    return s3.join(params.storage.uri(root), "_attempts", f"{step}-{key}")


def planned_devices(step: str) -> int:
    """Devices an attempt holds until its result says how many ran a unit: a failed or killed
    caption or encode is priced on this worker's devices."""
    if table_entry(step).units:
        from tasks.common.fanout import device_count

        return device_count()
    return 1


def run_attempt(params: Params, step: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `body` (the step) and return its envelope; a data step's attempt is recorded from
    start to end, failed when `body` raises, and the envelope's seconds are the record's."""
    prefix = attempt_prefix(params, step)
    if prefix is None:
        started = time.monotonic()
        result = body()
        return envelope(step, result, time.monotonic() - started)
    with attempts.recorded(prefix, planned_devices(step)) as record:
        result = body()
        record["devices"] = int(result.get("gpus", 1))
    return {**envelope(step, result, record["seconds"]), "attempts": prefix}
