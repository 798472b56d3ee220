"""A flow run goes through the local Prefect server, a deployment, the cpu pool and its worker."""

from __future__ import annotations

import uuid

from prefect import flow
from prefect.deployments import run_deployment

from infra import s3
from infra.settings import REPO_ROOT


def test_deployment_run_completes_on_cpu_pool(prefect_service, s3_prefix):
    source = flow.from_source(source=str(REPO_ROOT), entrypoint="flows/health.py:health")
    deployment_id = source.deploy(name="test-health", work_pool_name="cpu", print_next_steps=False)
    uri = s3.join(s3_prefix, "marker.txt")
    token = uuid.uuid4().hex
    run = run_deployment("health/test-health", parameters={"uri": uri, "text": token},
                         timeout=180)
    assert run.state is not None and run.state.is_completed(), run.state
    assert (run.deployment_id, run.work_pool_name) == (deployment_id, "cpu")
    assert s3.get_bytes(uri).decode() == token
