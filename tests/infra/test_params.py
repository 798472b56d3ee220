"""params.yaml loader: strict types, key paths in errors, the profile switch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from infra.config import ConfigError
from infra.settings import REPO_ROOT
from tasks.params import load_params, parse_params


def _repo_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_repository_params_load_for_both_profiles():
    demo = load_params(profile="demo")
    full = load_params(profile="full")
    assert demo.profile == "demo" and full.profile == "full"
    assert full.cost.rate == 3.75 and full.cost.gpu_type == "H100"


def test_unknown_key_names_its_path():
    data = _repo_params()
    data["demo"]["storage"]["buckett"] = "x"
    with pytest.raises(ConfigError, match=r"demo\.storage: unknown key\(s\) \['buckett'\]"):
        parse_params(data)


def test_wrong_type_names_its_path():
    data = _repo_params()
    data["full"]["cost"]["usd_per_gpu_hour"]["H100"] = "cheap"
    # The unused profile is validated too: a typo there is still an error.
    with pytest.raises(ConfigError, match=r"full\.cost\.usd_per_gpu_hour\.H100: expected a number"):
        parse_params(data, profile="demo")


def test_invalid_value_is_rejected_with_reason():
    data = _repo_params()
    data["demo"]["cost"]["gpu_type"] = "A100"
    with pytest.raises(ConfigError, match=r"demo\.cost: gpu_type 'A100' has no price"):
        parse_params(data)


def test_compile_mode_outside_torch_compile_modes_is_rejected():
    data = _repo_params()
    data["full"]["train"]["compile_mode"] = "max_autotune"
    with pytest.raises(ConfigError, match=r"full\.train\.compile_mode: 'max_autotune' is not "
                                          r"one of \['default', 'reduce-overhead'"):
        parse_params(data)
    data["full"]["train"]["compile_mode"] = "max-autotune"
    assert parse_params(data, profile="full").train.compile_mode == "max-autotune"


def test_unknown_profile_and_top_level_key():
    data = _repo_params()
    with pytest.raises(ConfigError, match="profile: 'large' is not one of"):
        parse_params(data, profile="large")
    data["extra"] = 1
    with pytest.raises(ConfigError, match="unknown top-level key"):
        parse_params(data)


def test_cli_dry_run_prints_resolved_config_and_rejects_bad_params(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tasks", "train", "--dry-run", "--profile", "full"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    shown = yaml.safe_load(run.stdout)
    assert shown["profile"] == "full" and "train" in shown and shown["cost"]["gpu_type"] == "H100"
    bad = _repo_params()
    bad["demo"]["storage"]["bucket"] = 7
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    run = subprocess.run([sys.executable, "-m", "tasks", "download", "--dry-run", "--params",
                          str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "demo.storage.bucket: expected a string" in run.stderr


def test_a_profile_extends_another_and_overrides_sections():
    full, dcae = load_params(profile="full"), load_params(profile="full_dcae")
    assert dcae.profile == "full_dcae"
    assert dcae.encode.vae == "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers"
    assert dcae.train.latent_downscale == 32 and dcae.train.model == full.train.model
    assert dcae.train.stages == full.train.stages and dcae.download == full.download
    # A null rate drops the inherited one; the others stay.
    assert dcae.cost.throughput == {"stage1": None, "stage2": None, "encode": None,
                                    "caption": 10.3}
    data = _repo_params()
    data["broken"] = {"extends": "fulll"}
    with pytest.raises(ConfigError, match=r"broken.extends: 'fulll' is not a profile"):
        parse_params(data)
    data["broken"] = {"extends": "loop"}
    data["loop"] = {"extends": "broken"}
    with pytest.raises(ConfigError, match="profiles extend in a circle"):
        parse_params(data)
