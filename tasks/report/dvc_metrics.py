"""The small, flat metrics file that `dvc metrics show` prints as one compact row per revision.

out/metrics.json holds only numbers under short keys: the final FID and CLIP score, the demo's
prompt-following (all-correct share for the report set, seen and held-out pairs, and chance's),
the model's cost and device-hours over every attempt beside this run's spend, and per training
stage its GPU-hours, cost and images seen.
The full step summaries stay in out/<step>.json (and the evaluation protocol in
out/evaluate.json).
"""

from __future__ import annotations

from typing import Any

from demo.attributes import GROUPS
from tasks.common.cost import Price, price
from tasks.params import Params
from tasks.report.ledger import LedgerRow, totals


def flat_metrics(params: Params, envelopes: list[dict[str, Any]], rows: list[LedgerRow],
                 stage_prices: dict[str, Price] | None = None) -> dict[str, float | int]:
    """{fid, clip_score, follow_<group>_all, follow_chance_all, cost_usd, device_hours,
    run_cost_usd, run_device_hours, <stage>_gpu_hours, <stage>_cost_usd, <stage>_images} for
    the steps present; a missing value is left out, never zero."""
    results = {env["step"]: env.get("result") or {} for env in envelopes}
    evaluation = results.get("evaluate", {})
    out: dict[str, float | int] = {}
    for key in ("fid", "clip_score"):
        if evaluation.get(key) is not None:
            out[key] = round(float(evaluation[key]), 4)
    following = evaluation.get("prompt_following") or {}
    for group in GROUPS:
        if (following.get(group) or {}).get("n"):
            out[f"follow_{group}_all"] = round(float(following[group]["all"]), 4)
    if following:
        out["follow_chance_all"] = round(float(following["chance"]["all"]), 4)
    total = totals(rows)
    # cost_usd is the model's (every attempt that produced it, cached ones included);
    # run_cost_usd is what this run spent: a cached rerun costs cents, the model does not.
    out["cost_usd"] = round(total["model_cost_usd"], 4)
    out["device_hours"] = round(total["model_device_hours"], 4)
    out["run_cost_usd"] = round(total["cost_usd"], 4)
    out["run_device_hours"] = round(total["device_hours"], 4)
    for name, stage in (results.get("train", {}).get("stages") or {}).items():
        # Every attempt at the stage's checkpoint folder (tasks/report/step.py stage_prices),
        # else this run's held time; by the one rule either way.
        stage_cost = (stage_prices or {}).get(name) or price(
            params.cost, float(stage.get("held_seconds", stage.get("seconds", 0.0))),
            int(stage.get("gpus", 1)))
        out[f"{name}_gpu_hours"] = round(stage_cost.device_hours, 4)
        out[f"{name}_cost_usd"] = round(stage_cost.cost_usd, 4)
        out[f"{name}_images"] = int(stage.get("images", 0))
    return out
