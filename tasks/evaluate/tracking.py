"""Evaluation results to MLflow (metrics, protocol, sample grid) and as markdown for Prefect.

Metric names carry the sample count and resolution (FID-10K and FID-30K are not comparable), and
the full protocol goes with them as tags and a JSON artifact, under a folder named by the
protocol hash so several evaluations of one run never overwrite each other.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from demo.attributes import GROUPS
from infra import tracking
from infra.tracking import experiment_id, log_batched, metric_entities, tag_entities


def metric_names(result: dict[str, Any]) -> dict[str, str]:
    """Protocol-qualified MLflow metric names, e.g. eval/fid_n30000_256px."""
    protocol = result["protocol"]
    suffix = f"n{protocol['num_samples']}_{protocol['resolution']}px"
    return {"fid": f"eval/fid_{suffix}", "clip_score": f"eval/clip_score_{suffix}",
            "prompt": f"eval/prompt_{{name}}_{{group}}_{suffix}"}


def following_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Prompt-following accuracies under protocol-qualified names (the demo vocabulary only):
    per attribute and all-correct, for the report set, seen and held-out pairs, and chance's
    all-correct."""
    following = result.get("prompt_following")
    if not following:
        return {}
    template = metric_names(result)["prompt"]
    out = {}
    for group in GROUPS:
        scores = following.get(group) or {}
        if scores.get("n"):
            out |= {template.format(name=name, group=group): float(scores[name])
                    for name in ("shape", "color", "position", "all")}
    out[template.format(name="all", group="chance")] = float(following["chance"]["all"])
    return out


def start_run(name: str) -> str:
    """A new MLflow run for an evaluation that no training run was given for; returns its id."""
    client = tracking.client()
    run = client.create_run(experiment_id(client), run_name=name)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def log_result(run_id: str, result: dict[str, Any], grid_png: bytes) -> None:
    """Log metrics, protocol tags, the protocol/result JSON and the grid PNG to run_id."""
    client = tracking.client()
    names = metric_names(result)
    metrics = {names["fid"]: result["fid"]}
    if result.get("clip_score") is not None:
        metrics[names["clip_score"]] = result["clip_score"]
    key = result["protocol_hash"]
    tags = {f"eval.{field}": value for field, value in result["protocol"].items()}
    log_batched(client, run_id, metrics=metric_entities(metrics | following_metrics(result)),
                tags=tag_entities({**tags, "eval.protocol_hash": key}))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        (folder / "samples_grid.png").write_bytes(grid_png)
        client.log_artifacts(run_id, str(folder), artifact_path=f"eval/{key}")


def following_lines(following: dict[str, Any] | None) -> list[str]:
    """Markdown rows of prompt-following (seen, held-out, chance), or none outside the demo."""
    if not following:
        return []
    from demo.attributes import prompt_following_table

    return ["Prompt following (shape, color, position of each image against its prompt):", "",
            prompt_following_table(following), ""]


def result_markdown(result: dict[str, Any]) -> str:
    """A short report of one evaluation, for a Prefect markdown artifact."""
    protocol = result["protocol"]
    clip = result.get("clip_score")
    lines = [
        f"# COCO-2014 val evaluation of `{result['checkpoint']}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| FID ({protocol['num_samples']} samples, {protocol['resolution']} px) | "
        f"{result['fid']:.3f} |",
        f"| CLIP score ({protocol['clip_model']}) | "
        f"{'not computed' if clip is None else f'{clip:.3f}'} |",
        "",
        *following_lines(result.get("prompt_following")),
        "Protocol (numbers are comparable only under an equal protocol):",
        "",
        "| field | value |",
        "|---|---|",
        *(f"| {field} | {value} |" for field, value in protocol.items()),
        "",
        f"Real statistics: {result['real_stats']}; generated images: {result['samples']}.",
    ]
    if any(result.get("real_skipped", {}).values()):
        lines.append(f"Real images skipped: {result['real_skipped']}.")
    if result.get("mlflow_run_id"):
        lines.append(f"MLflow run: `{result['mlflow_run_id']}`.")
    return "\n".join(lines) + "\n"
