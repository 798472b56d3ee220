"""benchmarks/masking_ablation.py: the three variants at equal steps and equal FLOPs, scored on
prompt-following and FID with a curve against images seen, rescored from its saved images."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.masking_ablation import FULL, budget_steps, main, runs
from tasks.models import build_local_models
from tasks.params import load_params


def test_equal_flops_gives_masked_variants_more_steps_and_runs_share_the_baseline():
    base = budget_steps(FULL, "none", "flops", 77, 64)
    naive = budget_steps(FULL, "naive", "flops", 77, 64)
    deferred = budget_steps(FULL, "deferred", "flops", 77, 64)
    assert base == FULL.steps == budget_steps(FULL, "deferred", "steps", 77, 64)
    # Naive masking drops 75 % of every block's tokens; deferred keeps the mixer unmasked.
    assert naive > deferred > base
    todo = runs(FULL, ("steps", "flops"))
    assert len(todo) == 15 and len(set(todo)) == 15  # 3 seeds x (1 baseline + 2 x 2)


def test_smoke_run_writes_scores_curve_images_and_rescores(tmp_path):
    build_local_models(load_params(profile="demo"))
    out = tmp_path / "ablation.json"
    main(["--smoke", "--variants", "none,deferred", "--budgets", "steps", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [(r["variant"], r["budget"]) for r in report["rows"]] == [
        ("none", "steps"), ("deferred", "steps")]
    run = report["runs"][0]
    assert 0.0 <= run["prompt_following"]["all"] <= 1.0 and run["fid"] > 0
    assert [p["step"] for p in run["curve"]] == [1, 2, 3, 6]  # eval_at shares of 6 steps
    assert all(p["fid"] > 0 for p in run["curve"])
    with np.load(out.with_suffix(".npz")) as final:
        assert sorted(final.files) == ["deferred-steps-0@6", "none-steps-0@6"]
        assert final["none-steps-0@6"].shape == (8, 3, 64, 64)
    for suffix in (".png", ".curve.png"):
        assert out.with_suffix(suffix).read_bytes()[:4] == b"\x89PNG"
    assert len(out.with_suffix(".partial.jsonl").read_text().splitlines()) == 2
    # FID again from the saved images (what a report measured on the GPU machine needs).
    fid = run["fid"]
    for r in report["runs"]:
        r["fid"] = None
        for p in r["curve"]:
            p["fid"] = None
    out.write_text(json.dumps(report))
    main(["--rescore", str(out)])
    again = json.loads(out.read_text())["runs"][0]
    assert abs(again["fid"] - fid) < 1e-6 * fid
