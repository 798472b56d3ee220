"""Register the deployments: `micro-budget/full`, and per pool of the step table (tasks/steps.py:
cpu, gpu) `micro-budget-step/<pool>` and `micro-budget-units/<pool>` (the chunks of
caption/encode units that a step shares out).

Usage: python -m flows.deploy   (the Prefect server and work pools must be up: make services-up)
At scale, point PREFECT_API_URL at the shared server and run GPU workers with `--pool gpu`.
"""

from __future__ import annotations

import os

from infra.settings import REPO_ROOT, prefect_api_url

# Without an API URL Prefect starts a throwaway server: register against the real one.
os.environ.setdefault("PREFECT_API_URL", prefect_api_url())

from prefect import flow  # noqa: E402

from tasks.steps import POOLS  # noqa: E402


def deploy_pool(pool: str) -> list[str]:
    """The step, units and node flows on one work pool, each deployment named after it."""
    source = str(REPO_ROOT)
    return [str(flow.from_source(source, entrypoint).deploy(
                name=pool, work_pool_name=pool, print_next_steps=False))
            for entrypoint in ("flows/steps.py:run_step", "flows/units.py:run_units",
                               "flows/nodes.py:train_node")]


def deploy() -> list[str]:
    ids = [str(flow.from_source(str(REPO_ROOT), "flows/pipeline.py:pipeline").deploy(
        name="full", work_pool_name="cpu", print_next_steps=False))]
    for pool in POOLS:
        ids += deploy_pool(pool)
    return ids


if __name__ == "__main__":
    for deployment_id in deploy():
        print(f"deployment {deployment_id}")
    print("run it: prefect deployment run micro-budget/full --watch")
