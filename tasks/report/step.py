"""Report step: cost ledger, metrics and sample grid to MLflow, published as a summary.

The body `run(params, driver)` is what the CLI/DVC and the pipeline flow both call. The driver
hands it the step envelopes (the flow: those of its run; the CLI: those the earlier stages
wrote to `storage.out_dir`, out/ by default) and the parent MLflow run (the flow opens one at
the start of the pipeline; from the CLI the report opens its own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from infra import tracking
from infra.tracking import log_batched, metric_entities
from tasks.common.cost import Price, price
from tasks.common.driver import Driver
from tasks.params import Params
from tasks.report.ledger import ledger, rows_as_dicts, totals
from tasks.steps import PRICED, step
from tasks.report.summary import fid_curve, final_metrics, report_markdown
from tasks.report.chart import cost_chart, fid_chart, planned_markdown
from tasks.report.dvc_metrics import flat_metrics
from tasks.report.tracking import (CHART_PATH, FID_CHART_PATH, GRID_PATH, artifact_url,
                                   finish_pipeline_run, log_step_run, run_url,
                                   start_pipeline_run)

def planned_by_step(params: Params) -> dict[str, dict[str, float]]:
    """The plan's device-hours and dollars per step, for planned-vs-actual."""
    from tasks.plan import by_step, plan

    return by_step(plan(params))


def register_run_model(params: Params, envelopes: list[dict[str, Any]], parent_run_id: str,
                       cost_usd: float) -> str | None:
    """The run's exported model as a new version of the registered model (None: no export)."""
    from infra.registry import register
    from tasks.report.tracking import params_hash

    train = next((e.get("result") or {} for e in envelopes if e["step"] == "train"), {})
    evaluation = next((e.get("result") or {} for e in envelopes if e["step"] == "evaluate"), {})
    if not train.get("diffusers"):
        return None
    return register(parent_run_id, train["diffusers"], {
        "fid": evaluation.get("fid"), "clip_score": evaluation.get("clip_score"),
        "cost_usd": round(cost_usd, 6), "params_hash": params_hash(params),
        "profile": params.profile, "checkpoint": evaluation.get("checkpoint"),
        # What it was scored at; `tasks sample` reads them from the export's model_index.json.
        "guidance": params.evaluate.guidance, "steps": params.evaluate.steps})


def eval_grid(envelopes: list[dict[str, Any]]) -> bytes | None:
    """The evaluation's sample grid, fetched from its MLflow run (None if there is none)."""
    ev = next((e["result"] for e in envelopes if e["step"] == "evaluate"), {})
    run_id, key = ev.get("mlflow_run_id"), ev.get("protocol_hash")
    if not run_id or not key:
        return None
    client = tracking.client()
    path = client.download_artifacts(run_id, f"eval/{key}/samples_grid.png")
    return Path(path).read_bytes()


def stage_prices(params: Params, envelopes: list[dict[str, Any]]) -> dict[str, Price]:
    """Per training stage of the run: every attempt recorded at its checkpoint folder
    (tasks/common/attempts.py), failed, killed and cached reruns included, priced by the one
    rule; stages with no record are left out."""
    from tasks.common import attempts
    from tasks.common.cost import attempts_price
    from tasks.train import keys

    train = next((e.get("result") or {} for e in envelopes if e["step"] == "train"), {})
    out = {}
    for name in train.get("stages") or {}:
        records = attempts.read(keys.stage_prefix(params, name))
        if records:
            out[name] = attempts_price(params.cost, records)
    return out


def stage_bills(params: Params, envelopes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per training stage of the run: its attempts, preemptions, lost work and the spend per
    price class (tasks/common/cost.py attempts_bill); stages with no record are left out."""
    from tasks.common import attempts
    from tasks.common.cost import attempts_bill
    from tasks.train import keys

    train = next((e.get("result") or {} for e in envelopes if e["step"] == "train"), {})
    out = {}
    for name in train.get("stages") or {}:
        records = attempts.read(keys.stage_prefix(params, name))
        if records:
            out[name] = attempts_bill(params.cost, records)
    return out


def attempts_markdown(bills: dict[str, dict[str, Any]]) -> str:
    lines = ["| stage | attempts | preemptions | lost steps | lost device-hours | lost (USD) | "
             "on-demand (USD) | spot (USD) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {b['attempts']} | {b['preemptions']} | {b['lost_steps']} | "
              f"{b['lost_device_hours']:.4f} | {b['lost_cost_usd']:.4f} | "
              f"{b['on_demand_cost_usd']:.4f} | {b['spot_cost_usd']:.4f} |"
              for name, b in bills.items()]
    return "\n".join(lines)


def summed(prices: list[Price]) -> Price:
    return Price(seconds=sum(p.seconds for p in prices), devices=max(p.devices for p in prices),
                 device_type=prices[0].device_type,
                 device_hours=sum(p.device_hours for p in prices),
                 cost_usd=sum(p.cost_usd for p in prices))


def step_prices(params: Params, envelopes: list[dict[str, Any]]) -> dict[str, Price]:
    """Per data step of the run: every attempt recorded where its envelope says
    (tasks/attempt.py), failed, killed and cached reruns included, priced by the one rule as
    the ledger prices the step (GPU steps per device, CPU steps as one machine)."""
    from tasks.common import attempts

    out = {}
    for env in envelopes:
        records = attempts.read(env["attempts"]) if env.get("attempts") else []
        if records:
            out[env["step"]] = summed([price(params.cost, float(r["seconds"]),
                                             int(r["devices"]), on_gpu=step(env["step"]).gpu)
                                       for r in records])
    return out


def model_prices(stages: dict[str, Price]) -> dict[str, Price]:
    """What the training step's outputs cost over its stages' recorded attempts."""
    return {"train": summed(list(stages.values()))} if stages else {}


def report(params: Params, envelopes: list[dict[str, Any]], parent_run_id: str) -> dict[str, Any]:
    """Log every step as a nested run, close the parent with the cost table; return the report."""
    stages = stage_prices(params, envelopes)
    rows = ledger(envelopes, params.cost, model_prices(stages) | step_prices(params, envelopes))
    for row, env in zip(rows, envelopes):
        log_step_run(parent_run_id, row, env.get("result") or {})
    metrics = final_metrics(envelopes)
    link = run_url(parent_run_id)
    grid = eval_grid(envelopes)
    grid_link = artifact_url(parent_run_id, GRID_PATH) if grid else None
    planned = planned_by_step(params)
    markdown = report_markdown(params.profile, envelopes, rows, link, grid_link)
    markdown += ("\n## Where the money went\n\n" + planned_markdown(rows, planned) + "\n\n"
                 f"![cost per step, actual and planned]"
                 f"({artifact_url(parent_run_id, CHART_PATH)})\n")
    bills = stage_bills(params, envelopes)
    if bills:
        markdown += ("\n## Training attempts\n\nEvery attempt at each stage's checkpoint folder; "
                     "a preemption loses the steps after the checkpoint it resumes from.\n\n"
                     + attempts_markdown(bills) + "\n")
    curve = fid_curve(envelopes)
    if curve:
        markdown += ("\n## FID against images seen\n\n| stage | images seen | FID |\n|---|---:|---:|\n"
                     + "".join(f"| {p['stage']} | {p['images_seen']:,} | {p['fid']:.2f} |\n"
                               for p in curve)
                     + f"\n![FID against images seen]"
                       f"({artifact_url(parent_run_id, FID_CHART_PATH)})\n")
    finish_pipeline_run(parent_run_id, rows, metrics, markdown, grid, planned,
                        cost_chart(rows, planned), curve, fid_chart(curve) if curve else None)
    return {"mlflow_run_id": parent_run_id, "mlflow_url": link, "grid_url": grid_link,
            "cost": rows_as_dicts(rows), "planned": planned, "stage_attempts": bills,
            "model_version": register_run_model(params, envelopes, parent_run_id,
                                                totals(rows)["model_cost_usd"]),
            "totals": totals(rows), "metrics": metrics, "fid_curve": curve,
            "flat_metrics": flat_metrics(params, envelopes, rows, stages),
            "markdown": markdown}


def previous_costs(params: Params, previous: tuple[dict[str, str], ...]) -> dict[str, float]:
    """What the superseded attempts spent: the ledger of the steps they finished."""
    from infra import s3

    envelopes = [s3.get_json(f"{attempt['folder']}/{name}.json")
                 for attempt in previous if attempt.get("folder")
                 for name in PRICED if s3.exists(f"{attempt['folder']}/{name}.json")]
    total = totals(ledger(envelopes, params.cost))
    return {"attempts": len(previous), "cost_usd": total["cost_usd"],
            "device_hours": total["device_hours"]}


@task(name="report", retries=2, retry_delay_seconds=10)
def report_pipeline(params: Params, envelopes: list[dict[str, Any]], parent_run_id: str,
                    previous: tuple[dict[str, str], ...]) -> dict[str, Any]:
    result = report(params, envelopes, parent_run_id)
    if previous:
        # Killed attempts of the same pipeline: their cost adds up here, in one place.
        earlier = previous_costs(params, previous)
        log_batched(tracking.client(), parent_run_id,
                    metrics=metric_entities({
                        "cost_usd_all_attempts": result["totals"]["cost_usd"]
                        + earlier["cost_usd"],
                        "device_hours_all_attempts": result["totals"]["device_hours"]
                        + earlier["device_hours"]}))
        result["previous_attempts"] = {**earlier, "runs": [p["run_id"] for p in previous]}
        result["markdown"] += (f"\n{earlier['attempts']} earlier attempt(s) of this pipeline "
                               f"were killed; they spent ${earlier['cost_usd']:.4f} "
                               f"({earlier['device_hours']:.4f} device-hours), so far "
                               f"${result['totals']['cost_usd'] + earlier['cost_usd']:.4f} "
                               "in all.\n")
    return result


def run(params: Params, driver: Driver) -> dict[str, Any]:
    """The report of the driver's envelopes under its parent run (or one of its own, tagged
    as the DVC driver's); with DVC's outputs also <out_dir>/report.md and metrics.json."""
    parent = driver.parent_run_id or start_pipeline_run(params, f"dvc-{params.profile}",
                                                        tags={"driver": "dvc"})
    result = driver.task(report_pipeline, params, driver.envelopes(params), parent,
                         driver.superseded)
    driver.publish("pipeline-report", result["markdown"],
                   "micro-budget pipeline: datasets, cost, FID")
    if driver.dvc_outputs:
        markdown = params.storage.out_path("report.md")
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(result["markdown"])
        params.storage.out_path("metrics.json").write_text(
            json.dumps(result["flat_metrics"], indent=2, sort_keys=True) + "\n")
    return {k: v for k, v in result.items() if k != "markdown"}
