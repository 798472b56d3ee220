"""What a step body asks of whoever runs it: the one seam between the CLI/DVC and Prefect.

Every step body (tasks/steps.py) is `run(params, driver)`. The body decides what the step does
and what its summary holds (skip messages, which datasets are recorded, the `gpus` the ledger
prices); the driver decides only how the work is carried out. `Local` is the CLI's and DVC's
driver, here; flows/steps.py holds Prefect's. A body never asks which driver it has.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Protocol

from tasks.common.fanout import run_chunk
from tasks.params import Params
from tasks.steps import PRICED
from tasks.steps import step as table_entry

Chunk = dict[str, Any]  # a share of a dataset's units and where it ran (fanout.run_chunk)


class Driver(Protocol):
    # The MLflow parent run that the step's runs nest under; None: a body opens its own.
    parent_run_id: str | None
    # Whether the body writes DVC's local outputs under storage.out_dir (plots, report files).
    dvc_outputs: bool
    # Earlier attempts of this pipeline that this one supersedes ({run_id, folder}): the report
    # adds their cost. Only the flow has them; DVC's reruns are one attempt each.
    superseded: tuple[dict[str, str], ...]

    def task(self, task: Any, *args: Any) -> Any:
        """Call a Prefect task of the step: as a task run with its declared retries, or its
        plain function (`task.fn`) where there is no flow run to hold one."""

    def publish(self, key: str, markdown: str, description: str) -> None:
        """Show a markdown summary where this driver's user looks for it."""

    def warn(self, text: str) -> None:
        """One line the step's user should notice in its log (a preemption survived)."""

    def share_units(self, step: str, params: Params, dataset: str,
                    units: list[Any]) -> list[Chunk]:
        """Run a dataset's units (a step with `units` in the table); one chunk per machine."""

    def train_on_nodes(self, params: Params, stage: str) -> dict[str, Any]:
        """Train one stage over train.nodes machines (train.nodes > 1)."""

    def envelopes(self, params: Params) -> list[dict[str, Any]]:
        """The envelopes of the priced steps this run has finished, in table order."""


class Local:
    """The CLI's and DVC's driver: everything in this process and its device children."""

    parent_run_id: str | None = None
    dvc_outputs = True
    superseded: tuple[dict[str, str], ...] = ()

    def task(self, task: Any, *args: Any) -> Any:
        # No flow run here: a Prefect task called as such would start one, or a server.
        return task.fn(*args)

    def publish(self, key: str, markdown: str, description: str) -> None:
        # stdout is the step's JSON summary (DVC's out file is a copy of it): reports go to stderr.
        print(markdown, file=sys.stderr)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def share_units(self, step: str, params: Params, dataset: str,
                    units: list[Any]) -> list[Chunk]:
        return [run_chunk(table_entry(step).module, params, dataset,
                          list(range(len(units))), units)]

    def train_on_nodes(self, params: Params, stage: str) -> dict[str, Any]:
        raise RuntimeError(f"train.nodes is {params.train.nodes}: a multi-node stage runs "
                           "through the flow (one gpu worker per node), not from the command "
                           "line")

    def envelopes(self, params: Params) -> list[dict[str, Any]]:
        """Those that `python -m tasks <step> --out <out_dir>/<step>.json` wrote (DVC's outs)."""
        paths = [params.storage.out_path(f"{name}.json") for name in PRICED]
        return [json.loads(path.read_text()) for path in paths if path.exists()]


def units_summary(summary: dict[str, Any], chunks: list[Chunk]) -> dict[str, Any]:
    """A dataset's summary with where its units ran and the devices that ran them (what the
    ledger prices: tasks/common/cost.py)."""
    return {**summary, "devices": sum(c["devices"] for c in chunks),
            "chunks": placement(chunks)}


def most_devices(summaries: dict[str, dict[str, Any]]) -> int:
    """The step's `gpus`: datasets run one after another, so the most any one of them held
    (at least one: a step that ran nothing still held its machine)."""
    return max([1, *(s.get("devices", 0) for s in summaries.values())])


def placement(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """Where each chunk of units ran: worker, host, flow run, devices and unit indices."""
    return [{"worker": c["worker"], "host": c["host"], "flow_run": c["flow_run"],
             "devices": c["devices"], "units": [r["index"] for r in c["records"]]}
            for c in chunks]


def unit_results(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """Every unit's result over all chunks, in unit order."""
    return [r["result"] for r in sorted((r for c in chunks for r in c["records"]),
                                        key=lambda r: r["index"])]

