"""The Prefect task: one dataset per call, its summary published as a markdown artifact."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import Artifact

from tasks.download.step import download_dataset


def test_download_dataset_task_publishes_summary_artifact(demo_params, prefect_service):
    params = demo_params()

    @flow(name="download-test")
    def one_dataset() -> dict:
        return download_dataset(params, "coco")

    summary = one_dataset()
    assert summary["dataset"] == "coco" and summary["samples"] == summary["succeeded"] > 0
    artifact = Artifact.get("download-coco")
    assert artifact is not None and artifact.type == "markdown"
    assert f"| succeeded | {summary['succeeded']} |" in artifact.data
    assert "| http_404 | 1 |" in artifact.data
