"""The evaluate step's entry points: argument checks and the Prefect task declaration."""

from __future__ import annotations

import pytest

from infra.config import build
from tasks.common.driver import Local
from tasks.evaluate.step import evaluate_checkpoint, run
from tasks.params import Params, load_params


def test_run_skips_when_disabled():
    params = build(Params, {"profile": "demo", "evaluate": {"enabled": False}}, "test")
    assert run(params, Local()) == {"skipped": "evaluate.enabled is false"}


def test_task_declares_retries():
    assert evaluate_checkpoint.retries == 2
    assert evaluate_checkpoint.retry_delay_seconds == 30


@pytest.mark.parametrize("profile", ["demo", "full"])
def test_params_yaml_profiles_parse(profile):
    evaluate = load_params(profile=profile).evaluate
    assert evaluate.inception == "fid-helper"
    assert evaluate.num_samples == (30_000 if profile == "full" else 48)
