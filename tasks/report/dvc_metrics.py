"""The small, flat metrics file that `dvc metrics show` prints as one compact row per revision.

out/metrics.json holds only numbers under short keys: the final FID and CLIP score, the demo's
prompt-following (all-correct share for the report set, seen and held-out pairs, and chance's),
the total cost and device-hours, and per training stage its GPU-hours, cost and images seen.
The full step summaries stay in out/<step>.json (and the evaluation protocol in
out/evaluate.json).
"""

from __future__ import annotations

from typing import Any

from tasks.common.cost import cost_usd, gpu_hours
from tasks.evaluate.attributes import GROUPS
from tasks.params import Params
from tasks.report.ledger import LedgerRow, totals


def flat_metrics(params: Params, envelopes: list[dict[str, Any]], rows: list[LedgerRow]
                 ) -> dict[str, float | int]:
    """{fid, clip_score, follow_seen_all, follow_held_out_all, follow_chance_all, cost_usd, device_hours, <stage>_gpu_hours, <stage>_cost_usd,
    <stage>_images} for the steps present; a missing value is left out, never zero."""
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
    out["cost_usd"] = round(total["cost_usd"], 4)
    out["device_hours"] = round(total["device_hours"], 4)
    cost = params.cost
    device = cost.gpu_type
    rate = cost.usd_per_gpu_hour.get(device, 0.0)
    for name, stage in (results.get("train", {}).get("stages") or {}).items():
        seconds = float(stage.get("held_seconds", stage.get("seconds", 0.0)))
        devices = 1 if device == "cpu" else int(stage.get("gpus", 1))  # priced as the ledger
        out[f"{name}_gpu_hours"] = round(gpu_hours(seconds, devices), 4)
        out[f"{name}_cost_usd"] = round(cost_usd(seconds, devices, rate), 4)
        out[f"{name}_images"] = int(stage.get("images", 0))
    return out
