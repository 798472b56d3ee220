"""The download body on the Prefect driver: a task run per dataset, its summary published as a
markdown artifact."""

from __future__ import annotations

import dataclasses

from prefect import flow
from prefect.artifacts import Artifact

from flows.steps import OnPrefect
from tasks.download.config import DATASETS
from tasks.download.step import download_dataset, run


def test_download_body_publishes_each_summary_on_prefect(demo_params, prefect_service):
    demo = demo_params().download
    params = demo_params(**{name: dataclasses.replace(getattr(demo, name), enabled=False)
                            for name in DATASETS if name != "coco"})

    @flow(name="download-test")
    def coco_only() -> dict:
        return run(params, OnPrefect())

    summaries = coco_only()
    assert list(summaries) == ["coco"]
    summary = summaries["coco"]
    assert summary["dataset"] == "coco" and summary["samples"] == summary["succeeded"] > 0
    artifact = Artifact.get("download-coco")
    assert artifact is not None and artifact.type == "markdown"
    assert f"| succeeded | {summary['succeeded']} |" in artifact.data
    assert "| http_404 | 1 |" in artifact.data
    assert download_dataset.retries == 2  # what the Prefect driver adds to the CLI's call
