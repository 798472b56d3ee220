"""Print what the newest finished pipeline run measured: the end of `make demo`.

    python -m tasks.report.latest [--profile demo|full]   # default: the one params.yaml runs

The flow's report step closes a parent MLflow run with the report as an artifact
(tasks/report/tracking.py); this reads that run back, so what the terminal shows is what the
MLflow UI holds: prompt-following with its chance row, FID against images seen, the cost, and
the link to the run with its sample grid.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from infra import tracking
from infra.settings import mlflow_uri
from infra.tracking import experiment_id
from tasks.params import load_params
from tasks.report.tracking import run_url

# Report sections worth a terminal (tasks/report/summary.py and step.py write them).
SECTIONS = ("### Prompt following", "## FID against images seen")


def latest_pipeline_run(client: MlflowClient, profile: str) -> Run | None:
    """The finished parent run of `profile` that ended last, or None."""
    runs = client.search_runs(
        [experiment_id(client)],
        filter_string=(f"tags.kind = 'pipeline' and tags.profile = '{profile}' "
                       "and attributes.status = 'FINISHED'"),
        order_by=["attributes.end_time DESC"], max_results=1)
    return runs[0] if runs else None


def section(markdown: str, heading: str) -> str:
    """`heading` and its text up to the next heading of any level, without image lines."""
    lines = markdown.splitlines()
    if heading not in lines:
        return ""
    start = lines.index(heading)
    body = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if not line.startswith("!["):
            body.append(line)
    return "\n".join([heading, *body]).strip()


def summary(client: MlflowClient, run: Run) -> str:
    """The run's prompt-following and FID sections, its cost and its link."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(client.download_artifacts(run.info.run_id, "report/report.md", tmp))
        markdown = path.read_text()
    parts = [section(markdown, heading) for heading in SECTIONS]
    spent, model = (run.data.metrics.get(k) for k in ("cost_usd", "model_cost_usd"))
    cost = "cost: not recorded" if spent is None else f"cost: this run ${spent:.4f}"
    if model is not None:
        cost += f", the model ${model:.4f} (every attempt that produced it)"
    tail = [cost,
            f"MLflow run (sample grid, charts): {run_url(run.info.run_id)}"]
    return "\n\n".join([*(p for p in parts if p), "\n".join(tail)])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="default: the profile params.yaml selects")
    args = ap.parse_args(argv)
    profile = args.profile or load_params().profile
    client = tracking.client()
    run = latest_pipeline_run(client, profile)
    if run is None:
        print(f"no finished pipeline run of profile {profile!r} at {mlflow_uri()}",
              file=sys.stderr)
        return 1
    print(summary(client, run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
