"""MLflow clients and batched logging: the one place a tracking client is built.

Every step and the flows log to the same experiment on the same server (infra/settings.py), so
the client, the experiment and the batching that keeps a step to a few requests live here, below
the steps that log (train, evaluate, report) and beside the other service clients (infra/s3.py).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH,
                                     MAX_PARAMS_TAGS_PER_BATCH)

from infra.settings import mlflow_uri

EXPERIMENT = "micro-budget"
# MLflow 3 opens an experiment in its GenAI view unless it is marked as model training.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def client(uri: str | None = None) -> MlflowClient:
    """A client of the project's tracking server (or of `uri`)."""
    return MlflowClient(tracking_uri=uri or mlflow_uri())


def experiment_id(client: MlflowClient) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return client.create_experiment(EXPERIMENT, tags={KIND_TAG: KIND})
    if found.tags.get(KIND_TAG) != KIND:
        client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
    return found.experiment_id


def log_batched(client: MlflowClient, run_id: str, metrics: Iterable[Metric] = (),
                params: Iterable[Param] = (), tags: Iterable[RunTag] = ()) -> int:
    """Everything in as few log_batch requests as MLflow's per-request limits allow (one
    request instead of one per value); returns the number of requests sent."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    requests = 0
    while metrics or params or tags:
        some_params, some_tags = params[:MAX_PARAMS_TAGS_PER_BATCH], tags[:MAX_PARAMS_TAGS_PER_BATCH]
        room = min(MAX_METRICS_PER_BATCH,
                   MAX_ENTITIES_PER_BATCH - len(some_params) - len(some_tags))
        client.log_batch(run_id, metrics=metrics[:room], params=some_params, tags=some_tags)
        metrics, params = metrics[room:], params[len(some_params):]
        tags = tags[len(some_tags):]
        requests += 1
    return requests


def param_entities(values: dict[str, Any]) -> list[Param]:
    # MLflow caps a param value at 6000 characters; params.yaml values are far shorter.
    return [Param(key, str(value)[:500]) for key, value in values.items()]


def metric_entities(metrics: dict[str, float], step: int = 0) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in metrics.items()]


def tag_entities(tags: dict[str, Any]) -> list[RunTag]:
    return [RunTag(key, str(value)) for key, value in tags.items()]
