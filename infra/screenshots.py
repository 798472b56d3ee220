"""Screenshots of the MLflow and Prefect UIs for the README, taken with headless Chromium.

    python -m infra.screenshots [--out docs/img]

Needs the services up and at least one pipeline run (`make demo`), and Debian's `chromium`.
Pages: the MLflow experiment table, the latest pipeline run (its cost metrics and nested step
runs), and the Prefect flow-run page of the latest `micro-budget` run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from infra import settings


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("no Chromium found: `apt-get install chromium` (Debian) and rerun")


def shoot(browser: str, url: str, out: Path, size: tuple[int, int] = (1600, 1000),
          keep_width: int | None = None) -> Path:
    """Render `url` after its scripts settle (virtual time) and write a PNG, optionally cut to
    its left `keep_width` pixels (MLflow's assistant side panel cannot be closed from here)."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=15000",
           f"--screenshot={out}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed on {url}: {done.stderr[-500:]}")
    if keep_width:
        from PIL import Image

        with Image.open(out) as image:
            image.crop((0, 0, keep_width, image.height)).save(out)
    print(f"{out}  <-  {url}")
    return out


def mlflow_pages() -> dict[str, str]:
    from infra import tracking  # mlflow loads in seconds: only when its pages are wanted

    base = settings.mlflow_uri().rstrip("/")
    client = tracking.client(base)
    if client.get_experiment_by_name(tracking.EXPERIMENT) is None:
        raise SystemExit(f"no MLflow experiment {tracking.EXPERIMENT!r}: run `make demo` first")
    experiment = tracking.experiment_id(client)  # also marks it a model-training experiment
    runs = client.search_runs([experiment], "tags.kind = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    pages = {"mlflow-runs": f"{base}/#/experiments/{experiment}/runs"}
    if runs:
        pages["mlflow-pipeline-run"] = f"{base}/#/experiments/{experiment}/runs/{runs[0].info.run_id}"
    return pages


def prefect_pages() -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    base = settings.prefect_api_url().removesuffix("/api")
    pages = {"prefect-runs": f"{base}/runs"}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["micro-budget"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    if runs:
        pages["prefect-pipeline-run"] = f"{base}/runs/flow-run/{runs[0].id}"
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=settings.REPO_ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    for name, url in mlflow_pages().items():
        shoot(browser, url, args.out / f"{name}.png", (1600, 1500), keep_width=1180)
    for name, url in prefect_pages().items():
        shoot(browser, url, args.out / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
