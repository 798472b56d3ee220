"""The MLflow model registry: every finished pipeline run's exported model as a new version of
the registered model `micro-budget`, and `models:/...` references resolved back to a folder.

A version's source is the diffusers export next to the last stage's checkpoint in S3
(`<checkpoint>/diffusers`, tasks/export); its tags carry FID, CLIP score, cost and the params
hash, so the Models page of the MLflow UI compares versions by what they cost and score. It knows
MLflow and S3 only: the report step registers, `python -m tasks sample` resolves and fetches.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from infra import s3, tracking
from infra.settings import mlflow_uri

MODEL_NAME = "micro-budget"


def register(run_id: str, source: str, tags: dict[str, Any],
             name: str = MODEL_NAME) -> str:
    """Register `source` (the export's S3 folder) as a new version of `name`; its number."""
    client = tracking.client()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="MicroDiT pipelines exported by "
                                       "micro-budget runs (diffusers format)")
    version = client.create_model_version(
        name, source, run_id=run_id,
        tags={k: str(v) for k, v in tags.items() if v is not None})
    return str(version.version)


def resolve(reference: str) -> str:
    """`models:/<name>/latest` or `models:/<name>/<version>` -> the version's source URI."""
    if not reference.startswith("models:/"):
        raise ValueError(f"{reference!r} is not a models:/<name>/<version|latest> reference")
    name, _, which = reference.removeprefix("models:/").partition("/")
    client = tracking.client()
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise FileNotFoundError(f"no registered model {name!r} in {mlflow_uri()}: run the "
                                "pipeline to the end first")
    if which in ("", "latest"):
        return max(versions, key=lambda v: int(v.version)).source
    found = [v for v in versions if v.version == which]
    if not found:
        raise FileNotFoundError(f"model {name!r} has no version {which!r}; versions: "
                                f"{sorted(int(v.version) for v in versions)}")
    return found[0].source


def fetch(source: str, dest: Path | None = None) -> Path:
    """The export folder of a version on local disk (downloaded from S3 when it is there)."""
    if not source.startswith("s3://"):
        return Path(source)
    dest = dest or Path(tempfile.mkdtemp(prefix="micro-budget-model-"))
    uris = list(s3.list_uris(source.rstrip("/") + "/"))
    if not uris:
        raise FileNotFoundError(f"the registered model's files are gone from {source}")
    for uri in uris:
        s3.download_file(uri, dest / uri[len(source.rstrip("/")) + 1:])
    return dest


def run_source(run_id: str, name: str = MODEL_NAME) -> str:
    """The source of the version a pipeline run registered."""
    versions = tracking.client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise FileNotFoundError(f"run {run_id} registered no version of {name!r}: was it a "
                                "finished pipeline run (its train step exports the model)?")
    return max(versions, key=lambda v: int(v.version)).source
