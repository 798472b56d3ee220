"""The suite never touches a user's work (issue 31, item 3): its state folder and ports are
disjoint from the user's, and the user's S3 objects, MLflow runs, registry versions and checkout
files (out/, the state folder) are the same after the suite's tests as before them.

The comparison runs last in its session (tests/conftest.py orders it) against the fingerprint the
session took before its first test, so under `make test` it covers every pipeline test of the run;
on its own it still covers the pipeline run and registry write it makes itself."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra.registry import register
from infra.settings import REPO_ROOT, mlflow_uri
from tests import user_world as lib

QUICK = REPO_ROOT / "tests" / "params" / "quick_demo.yaml"


def test_the_test_world_is_disjoint_from_the_users(user_environ):
    users, ours = lib.resolve(user_environ), lib.resolve(dict(os.environ))
    shared = users.bound_ports() & ours.bound_ports()
    assert not shared, f"the suite's services would bind the user's ports {sorted(shared)}"
    assert users.state_dir != ours.state_dir
    assert users.state_dir not in ours.state_dir.parents
    assert ours.state_dir not in users.state_dir.parents
    assert users.mlflow_uri != ours.mlflow_uri == os.environ["MLFLOW_TRACKING_URI"]


@pytest.mark.slow
def test_the_suite_leaves_the_users_world_as_it_was(user_world, pipeline_services):
    deploy()
    run = run_deployment("micro-budget/full", timeout=900,
                         parameters={"params_path": str(QUICK), "steps": ["download"]})
    assert run.state is not None and run.state.is_completed(), run.state
    client = MlflowClient(tracking_uri=mlflow_uri())
    experiment = client.get_experiment_by_name("micro-budget").experiment_id
    pipeline = client.search_runs([experiment],
                                  filter_string=f"tags.prefect_flow_run = '{run.id}'")
    assert len(pipeline) == 1, "the pipeline's run is not in the suite's MLflow"
    register(pipeline[0].info.run_id, "s3://micro-budget/test/user-world/diffusers", {})

    changed = lib.differences(user_world.before, user_world.now())
    assert not changed, "the suite changed the user's world:\n" + "\n".join(changed[:40])
    if user_world.seeded:  # what was seeded is what was compared
        assert "micro-budget/raw/user/seed.txt" in user_world.before["objects"]
        assert user_world.before["runs"] and user_world.before["versions"]
