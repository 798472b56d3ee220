"""A params file that extends another: overrides merge into the named profile's block."""

from __future__ import annotations

import pytest
import yaml

from infra.config import ConfigError
from infra.settings import REPO_ROOT
from tasks.params import dumps_resolved, load_params, loads_resolved


def test_overrides_merge_into_the_extended_profile(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "params.yaml"), "profile": "full",
        "overrides": {"train": {"run_name": "small", "stages": [{"steps": 3}, {}, {}, {}]},
                      "evaluate": {"num_samples": 10}}}))
    params, full = load_params(path), load_params(profile="full")
    assert params.profile == "full" and params.train.run_name == "small"
    assert params.train.stages[0].steps == 3 and params.train.stages[0].lr == full.train.stages[0].lr
    assert params.train.stages[1:] == full.train.stages[1:]
    assert params.evaluate.num_samples == 10 and params.evaluate.steps == full.evaluate.steps
    assert params.download == full.download
    # What a step, a worker or a rank receives loads back to the same values.
    assert loads_resolved(*dumps_resolved(params)) == params


def test_bad_extends_files_fail_clearly(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"extends": str(REPO_ROOT / "params.yaml"), "demo": {}}))
    with pytest.raises(ConfigError, match="takes only extends, profile and overrides"):
        load_params(path)
    path.write_text(yaml.safe_dump({"extends": str(REPO_ROOT / "params.yaml"),
                                    "profile": "nope"}))
    with pytest.raises(ConfigError, match="profile 'nope' is not in"):
        load_params(path)
    path.write_text(yaml.safe_dump({"extends": "missing.yaml", "profile": "full"}))
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(path)
    path.write_text(yaml.safe_dump({"extends": str(REPO_ROOT / "params.yaml"), "profile": "full",
                                    "overrides": {"train": {"stagez": []}}}))
    with pytest.raises(ConfigError, match="stagez"):
        load_params(path)
