"""The pipeline run in MLflow: one parent run per pipeline run, a nested run per step.

The parent carries the profile, the cost table (per-step and total device-hours and dollars) and
the final FID, so runs can be compared side by side in the MLflow UI; each step's nested run holds
its own wall time, cost and summary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from infra import tracking
from infra.config import flatten, to_dict
from infra.settings import mlflow_uri
from infra.tracking import experiment_id, log_batched, metric_entities, param_entities, tag_entities
from tasks.params import Params
from tasks.report.ledger import LedgerRow, rows_as_dicts, totals
from tasks.steps import PRICED


def params_hash(params: Params) -> str:
    from tasks.common.keys import digest

    return digest(to_dict(params))


def start_pipeline_run(params: Params, name: str, tags: dict[str, str] | None = None) -> str:
    """Create the parent run (left open until finish_pipeline_run); returns its id."""
    client = tracking.client()
    run = client.create_run(experiment_id(client), run_name=name,
                            tags={"profile": params.profile, "kind": "pipeline",
                                  "params_hash": params_hash(params), **(tags or {})})
    log_batched(client, run.info.run_id, params=param_entities(flatten(to_dict(params))))
    return run.info.run_id


def supersede_stale_runs(params: Params, run_id: str) -> list[dict[str, str]]:
    """Earlier attempts of the same pipeline left RUNNING (a killed driver never closes its
    run): mark them KILLED with the last step they finished, link them from `run_id`, and
    return them ({run_id, folder}) so the report can add their cost to this attempt's."""
    client = tracking.client()
    current = client.get_run(run_id)
    stale = client.search_runs(
        [current.info.experiment_id],
        filter_string=(f"tags.kind = 'pipeline' and tags.params_hash = '{params_hash(params)}' "
                       "and attributes.status = 'RUNNING'"))
    out = []
    for run in stale:
        if run.info.run_id == run_id:
            continue
        folder = run.data.tags.get("pipeline_folder", "")
        done = [step for step in PRICED if folder and _exists(f"{folder}/{step}.json")]
        log_batched(client, run.info.run_id, tags=tag_entities(
            {"stopped_at": f"after {done[-1]}" if done else "start", "superseded_by": run_id}))
        client.set_terminated(run.info.run_id, status="KILLED")
        out.append({"run_id": run.info.run_id, "folder": folder})
        out += _earlier_attempts(client, run)
    out = list({r["run_id"]: r for r in out}.values())  # an attempt once, however reached
    if out:
        client.set_tag(run_id, "previous_attempts", ",".join(r["run_id"] for r in out))
    return out


def _earlier_attempts(client: MlflowClient, run: Any) -> list[dict[str, str]]:
    """The attempts an attempt had itself superseded, all the way back."""
    out = []
    for run_id in filter(None, run.data.tags.get("previous_attempts", "").split(",")):
        earlier = client.get_run(run_id)
        out.append({"run_id": run_id, "folder": earlier.data.tags.get("pipeline_folder", "")})
        out += _earlier_attempts(client, earlier)
    return out


def _exists(uri: str) -> bool:
    from infra import s3

    return s3.exists(uri)


def log_step_run(parent_id: str, row: LedgerRow, result: dict[str, Any]) -> str:
    """A nested run for one step: wall time, devices, cost and its JSON summary."""
    client = tracking.client()
    parent = client.get_run(parent_id)
    run = client.create_run(parent.info.experiment_id, run_name=row.step,
                            tags={MLFLOW_PARENT_RUN_ID: parent_id, "kind": "step",
                                  "step": row.step, "profile": parent.data.tags.get("profile", "")})
    run_id = run.info.run_id
    log_batched(client, run_id,
                metrics=metric_entities({"seconds": row.seconds, "device_hours": row.device_hours,
                                         "cost_usd": row.cost_usd,
                                         "model_cost_usd": row.model_cost_usd}),
                tags=tag_entities({"device_type": row.device_type}))
    client.log_dict(run_id, result, f"{row.step}_summary.json")
    client.set_terminated(run_id)
    return run_id


def finish_pipeline_run(parent_id: str, rows: list[LedgerRow], metrics: dict[str, float],
                        report_md: str, grid_png: bytes | None = None,
                        planned: dict[str, dict[str, float]] | None = None,
                        chart_png: bytes | None = None,
                        fid_curve: list[dict[str, Any]] | None = None,
                        fid_png: bytes | None = None) -> None:
    """Cost table (actual and planned per step), totals and final metrics on the parent run,
    the cost chart and the report, then close it."""
    client = tracking.client()
    total = totals(rows)
    values: dict[str, float] = {}
    for row in rows:
        values |= {f"cost_usd/{row.step}": row.cost_usd,
                   f"device_hours/{row.step}": row.device_hours}
    for step, plan in (planned or {}).items():
        values |= {f"planned_cost_usd/{step}": plan["cost_usd"],
                   f"planned_device_hours/{step}": plan["device_hours"]}
    if planned:
        values["planned_cost_usd"] = sum(p["cost_usd"] for p in planned.values())
    values |= {"cost_usd": total["cost_usd"], "device_hours": total["device_hours"],
               "model_cost_usd": total["model_cost_usd"],
               "model_device_hours": total["model_device_hours"],
               "wall_seconds": total["seconds"], **metrics}
    # MLflow's chart of the FID curve has images seen on the x axis.
    curve = [m for point in fid_curve or []
             for m in metric_entities({"eval/fid_by_images_seen": point["fid"]},
                                      step=point["images_seen"])]
    log_batched(client, parent_id, metrics=metric_entities(values) + curve)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "cost_table.json").write_text(json.dumps(rows_as_dicts(rows), indent=2))
        (folder / "report.md").write_text(report_md)
        if grid_png:
            (folder / GRID_PATH.split("/")[-1]).write_bytes(grid_png)
        if chart_png:
            (folder / CHART_PATH.split("/")[-1]).write_bytes(chart_png)
        if fid_png:
            (folder / FID_CHART_PATH.split("/")[-1]).write_bytes(fid_png)
        client.log_artifacts(parent_id, str(folder), artifact_path="report")
    client.set_terminated(parent_id)


def fail_pipeline_run(parent_id: str, step: str, message: str,
                      status: str = "FAILED") -> None:
    """Close a pipeline run that did not finish: FAILED (or KILLED) with the step that stopped
    it and the error (for a refused budget, the plan), so no run is left RUNNING. A run a
    later attempt already superseded keeps its KILLED status and the step it had reached: its
    driver outlived its worker and is only now giving up."""
    client = tracking.client()
    if client.get_run(parent_id).info.status != "RUNNING":
        return
    log_batched(client, parent_id, tags=tag_entities(
        {"stopped_at": step, "error": message.splitlines()[0][:500] if message else ""}))
    client.log_text(parent_id, message, "report/error.txt")
    client.set_terminated(parent_id, status=status)


GRID_PATH = "report/samples_grid.png"  # where finish_pipeline_run logs the sample grid
CHART_PATH = "report/cost_by_step.png"  # and the cost chart
FID_CHART_PATH = "report/fid_by_images_seen.png"  # and FID against images seen


def artifact_url(run_id: str, path: str) -> str:
    """A direct link to one artifact, served by the tracking server (images in markdown)."""
    return f"{mlflow_uri().rstrip('/')}/get-artifact?path={quote(path)}&run_uuid={run_id}"


def run_url(run_id: str) -> str:
    client = tracking.client()
    run = client.get_run(run_id)
    return f"{mlflow_uri()}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
