"""`micro-budget-step`: one pipeline step as its own flow run, on the work pool that fits it.

The pipeline flow starts this flow through the `micro-budget-step/<pool>` deployment of the
step's pool (tasks/steps.py), so GPU steps run on GPU workers. The flow runs the step's body,
the same function the CLI and DVC call, with `OnPrefect`, the Prefect driver: Prefect tasks run
as task runs with their retries, summaries become markdown artifacts, caption and encode split
their units over the pool's workers (flows/units.py) and each worker over its devices
(tasks/common/fanout.py), and a multi-node stage starts its other nodes (flows/nodes.py). Each
step then writes its envelope (result, wall time and where its attempts are recorded:
tasks/attempt.py) to S3 for the report and returns the URI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from flows.failures import failed_state
from infra import s3
from tasks.attempt import run_attempt
from tasks.params import Params, loads_resolved
from tasks.steps import step as table_entry


@dataclass(frozen=True)
class OnPrefect:
    """The Prefect driver of a step body (tasks/common/driver.py), inside a flow run."""

    parent_run_id: str | None = None
    # The report's inputs, which the pipeline flow holds: the envelopes of its run's steps and
    # the earlier attempts it supersedes.
    finished: tuple[dict[str, Any], ...] = ()
    superseded: tuple[dict[str, str], ...] = ()
    dvc_outputs: bool = field(default=False, init=False)

    def task(self, task: Any, *args: Any) -> Any:
        return task(*args)

    def publish(self, key: str, markdown: str, description: str) -> None:
        create_markdown_artifact(key=key, markdown=markdown, description=description)

    def warn(self, text: str) -> None:
        get_run_logger().warning("%s", text)

    def share_units(self, step: str, params: Params, dataset: str,
                    units: list[Any]) -> list[dict[str, Any]]:
        from flows.units import share_units

        return share_units(step, params, dataset, units)

    def train_on_nodes(self, params: Params, stage: str) -> dict[str, Any]:
        from flows.nodes import train_stage_on_nodes  # one flow run per other node

        return train_stage_on_nodes(params, stage, self.parent_run_id)

    def envelopes(self, params: Params) -> list[dict[str, Any]]:
        return list(self.finished)


@flow(name="micro-budget-step", flow_run_name="{step}")
def run_step(step: str, envelope_uri: str, params_yaml: str, params_sha256: str,
             parent_run_id: str | None = None) -> str | State:
    """Run one step and write its envelope to `envelope_uri`; returns that URI.

    `params_yaml` and `params_sha256` are the params the pipeline approved
    (tasks.params.dumps_resolved): the step runs them whatever params.yaml this worker holds.

    A missing file, an unreachable host, a refused token or credentials or a full disk ends the
    run Failed with one line (cause and fix) as its state message, the traceback in its log."""
    entry = table_entry(step)
    if not entry.priced:
        raise ValueError(f"step {step} runs in the pipeline flow, on the envelopes of its run")
    body = entry.load()
    try:
        params = loads_resolved(params_yaml, params_sha256)
        s3.put_json(envelope_uri, run_attempt(
            params, step, lambda: body(params, OnPrefect(parent_run_id=parent_run_id))))
    except Exception as err:  # noqa: BLE001 - anything not operational is re-raised
        state = failed_state(err)
        if state is None:
            raise
        return state
    return envelope_uri
