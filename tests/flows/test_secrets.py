"""Secrets stay in their place: the quick demo pipeline runs through `micro-budget/full` (the
shared test corpus, few-step training), and no credential of the suite's world (S3 keys, MLflow
and Prefect credentials, HF_TOKEN) appears in what the run and the suite wrote: MLflow params,
tags and artifacts, Prefect flow-run parameters, logs and artifacts, S3 objects, the service
logs, DVC files, or the command line of any process while the pipeline ran."""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path

import psutil
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra import services, settings
from infra.s3 import make_client
from infra.settings import REPO_ROOT, mlflow_uri


def _secrets() -> dict[str, str]:
    """Each secret of the world and the forms it travels in (the Prefect Basic header)."""
    creds = services.ensure_credentials()
    found = {k: v for k, v in creds.items() if k in services.CREDENTIALS}
    found["MB_PREFECT_AUTH_STRING (base64)"] = base64.b64encode(
        creds["MB_PREFECT_AUTH_STRING"].encode()).decode()
    mlflow = f"{creds['MB_MLFLOW_USERNAME']}:{creds['MB_MLFLOW_PASSWORD']}"
    found["MB_MLFLOW (base64)"] = base64.b64encode(mlflow.encode()).decode()
    if len(os.environ.get("HF_TOKEN", "")) >= 8:
        found["HF_TOKEN"] = os.environ["HF_TOKEN"]
    return found


def _leaks(where: str, text: str, secrets: dict[str, str]) -> list[str]:
    return [f"{name} in {where}" for name, value in secrets.items() if value in text]


class CommandLines(threading.Thread):
    """Every process's command line, read every 0.2 s while the pipeline runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                self.seen.add(" ".join(proc.info["cmdline"] or []))
            time.sleep(0.2)


def test_no_credential_leaves_its_place(quick_params, pipeline_services):
    secrets = _secrets()
    path = quick_params()
    deploy()
    watch = CommandLines()
    watch.start()
    try:
        run = run_deployment("micro-budget/full", timeout=1800,
                             parameters={"params_path": str(path)})
    finally:
        watch.done.set()
        watch.join()
    assert run.state is not None and run.state.is_completed(), run.state
    assert len(watch.seen) > 10
    leaks = _leaks("a process command line", "\n".join(watch.seen), secrets)

    # MLflow: every run's params and tags, and every artifact (through S3 below).
    client = MlflowClient(tracking_uri=mlflow_uri())
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments],
                              run_view_type=ViewType.ALL, max_results=50000)
    assert any(r.info.run_id for r in runs)
    for r in runs:
        leaks += _leaks(f"MLflow run {r.info.run_id}",
                        repr((r.data.params, r.data.tags)), secrets)

    # Prefect: the flow runs' parameters, logs and artifacts.
    with get_client(sync_client=True) as prefect:
        flow_runs = prefect.read_flow_runs()
        for fr in flow_runs:
            leaks += _leaks(f"Prefect flow run {fr.name} parameters", repr(fr.parameters),
                            secrets)
            logs = prefect.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
            leaks += _leaks(f"Prefect flow run {fr.name} logs",
                            "\n".join(log.message for log in logs), secrets)
        artifacts = prefect.read_artifacts()
        leaks += _leaks("Prefect artifacts", repr([(a.key, a.data, a.description)
                                                   for a in artifacts]), secrets)
    assert run.id in {fr.id for fr in flow_runs}

    # S3: every object of the world's buckets (MLflow's artifacts and the report among them).
    s3 = make_client(settings.s3_settings())
    objects = 0
    for bucket in services.BUCKETS:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if obj["Size"] > 64 << 20:
                    continue
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                leaks += _leaks(f"s3://{bucket}/{obj['Key']}",
                                body.decode("latin-1"), secrets)
                objects += 1
    assert objects > 0

    # The services' logs, and the DVC files a user commits.
    for log in (settings.state_dir() / "logs").glob("*.log"):
        leaks += _leaks(str(log), log.read_text(errors="replace"), secrets)
    # pathlib's "*.dvc" also matches the .dvc folder itself: files only.
    dvc_files = [REPO_ROOT / "dvc.yaml", REPO_ROOT / "dvc.lock", REPO_ROOT / ".dvc" / "config",
                 *(p for p in REPO_ROOT.glob("*.dvc") if p.is_file())]
    for file in filter(Path.exists, dvc_files):
        leaks += _leaks(str(file), file.read_text(errors="replace"), secrets)
    assert leaks == []
