"""out/metrics.json is flat and small, and `dvc metrics show` prints it as one compact table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from infra.settings import REPO_ROOT
from tasks.params import load_params
from tasks.report.dvc_metrics import flat_metrics
from tasks.report.ledger import envelope, ledger

STAGE = {"images": 64, "seconds": 10.0, "held_seconds": 36.0, "gpus": 2, "losses": [1.0, 0.9]}
ENVELOPES = [
    envelope("download", {"coco": {}}, 7.2),
    envelope("train", {"stages": {"stage1": STAGE, "stage2": {**STAGE, "images": 32}},
                       "gpus": 2, "gpu_seconds_per_device": 72.0}, 80.0),
    envelope("evaluate", {"fid": 123.456789, "clip_score": None, "protocol": {}}, 20.0),
]


def test_metrics_are_flat_numbers_per_stage():
    params = load_params(profile="demo")
    metrics = flat_metrics(params, ENVELOPES, ledger(ENVELOPES, params.cost))
    assert metrics["fid"] == 123.4568 and "clip_score" not in metrics  # none: left out
    assert metrics["stage1_images"] == 64 and metrics["stage2_images"] == 32
    assert metrics["stage1_gpu_hours"] == 0.01  # 36 s on one CPU machine (demo prices cpu)
    assert metrics["stage1_cost_usd"] == round(0.01 * 0.08, 4)
    assert all(isinstance(v, (int, float)) for v in metrics.values())


def test_dvc_metrics_show_prints_a_compact_table(tmp_path):
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent))
    params = load_params(profile="demo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(
        flat_metrics(params, ENVELOPES, ledger(ENVELOPES, params.cost))))
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["report"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": {
        "cmd": "true", "metrics": stage["metrics"]}}}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    shown = subprocess.run([dvc, "metrics", "show"], cwd=tmp_path, capture_output=True,
                           text=True, env=env, check=True).stdout
    header, row = shown.splitlines()[0].split(), shown.splitlines()[1].split()
    assert header[:2] == ["Path", "cost_usd"] and "fid" in header and "stage1_images" in header
    assert row[0] == "out/metrics.json" and "123.4568" in row and len(shown.splitlines()) == 2
