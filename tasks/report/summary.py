"""The pipeline report: dataset stats, cost table, FID, prompt-following and a sample grid, as
markdown."""

from __future__ import annotations

from typing import Any

from demo.attributes import GROUPS, prompt_following_table
from tasks.report.ledger import LedgerRow, ledger_markdown


def _by_step(envelopes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {env["step"]: env.get("result") or {} for env in envelopes}


def dataset_table(download: dict[str, Any]) -> str:
    lines = ["| dataset | samples | attempted | succeeded | success rate | top failure |",
             "|---|---:|---:|---:|---:|---|"]
    for name, s in sorted(download.items()):
        if not isinstance(s, dict) or "samples" not in s:
            continue
        failed = s.get("failed") or {}
        top = max(failed.items(), key=lambda kv: kv[1]) if failed else ("-", 0)
        lines.append(f"| {name} | {s['samples']} | {s.get('attempted', '-')} | "
                     f"{s.get('succeeded', '-')} | {s.get('success_rate', 0):.1%} | "
                     f"{top[0]} ({top[1]}) |")
    return "\n".join(lines)


def final_metrics(envelopes: list[dict[str, Any]]) -> dict[str, float]:
    """FID / CLIP score of the evaluate step under protocol-qualified names."""
    ev = _by_step(envelopes).get("evaluate", {})
    if "fid" not in ev:
        return {}
    protocol = ev.get("protocol", {})
    suffix = f"n{protocol.get('num_samples', '?')}_{protocol.get('resolution', '?')}px"
    out = {f"fid_{suffix}": float(ev["fid"])}
    if ev.get("clip_score") is not None:
        out[f"clip_score_{suffix}"] = float(ev["clip_score"])
    following = ev.get("prompt_following") or {}
    for group in GROUPS:
        scores = following.get(group) or {}
        if scores.get("n"):
            out |= {f"prompt_{name}_{group}_{suffix}": float(scores[name])
                    for name in ("shape", "color", "position", "all")}
    if following:
        out[f"prompt_all_chance_{suffix}"] = float(following["chance"]["all"])
    return out


def fid_curve(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FID of each scored stage against the images seen when its checkpoint was saved (the
    stages' images summed up to it), in training order; empty unless two or more were scored."""
    steps = _by_step(envelopes)
    by_stage = steps.get("evaluate", {}).get("by_stage") or {}
    stages = steps.get("train", {}).get("stages") or {}
    points, seen = [], 0
    for name, stage in stages.items():
        seen += int(stage.get("images", 0))
        if name in by_stage and by_stage[name].get("fid") is not None:
            points.append({"stage": name, "images_seen": seen,
                           "fid": float(by_stage[name]["fid"]),
                           "resolution": by_stage[name].get("resolution")})
    return points if len(points) > 1 else []


def report_markdown(profile: str, envelopes: list[dict[str, Any]], rows: list[LedgerRow],
                    mlflow_link: str | None = None, grid_link: str | None = None) -> str:
    steps = _by_step(envelopes)
    metrics = final_metrics(envelopes)
    ev = steps.get("evaluate", {})
    parts = [f"# micro-budget pipeline report (profile `{profile}`)", ""]
    if mlflow_link:
        parts += [f"MLflow run: {mlflow_link}", ""]
    parts += ["## Cost", "", ledger_markdown(rows), ""]
    if "download" in steps:
        parts += ["## Datasets", "", dataset_table(steps["download"]), ""]
    parts += ["## Evaluation", ""]
    if metrics:
        protocol = ev.get("protocol", {})
        parts += [f"| metric | value |", "|---|---:|"]
        parts += [f"| {k} | {v:.3f} |" for k, v in metrics.items()]
        parts += ["", "Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), ""]
        if ev.get("prompt_following"):
            parts += ["### Prompt following", "",
                      "Generated images classified by shape, color and position "
                      "(demo/attributes.py) against their COCO-val prompts; held-out "
                      "pairs are (shape, color) pairs no training set shows.", "",
                      prompt_following_table(ev["prompt_following"]), ""]
    else:
        parts += ["No evaluation in this run.", ""]
    if grid_link:
        parts += [f"![Samples from the EMA weights for COCO captions]({grid_link})", ""]
    train = steps.get("train", {})
    if train:
        parts += ["## Training", "", "```", _compact(train), "```", ""]
    return "\n".join(parts)


def _compact(data: dict[str, Any], limit: int = 2000) -> str:
    import json

    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "\n..."
