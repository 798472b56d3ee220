"""The step table: every pipeline step once, read by every driver.

The CLI (tasks/cli.py, and through it DVC) and the Prefect flows (flows/steps.py,
flows/pipeline.py, flows/units.py, flows/deploy.py) take their list of steps, each step's params
sections, its work pool and its body from here; the cost ledger (tasks/report/ledger.py) takes
its rows and how each is priced; tests/test_dvc_deps.py checks dvc.yaml's stages against it.

A step's body is named by a "module:function" string and imported only when the step runs, so
this table imports no step (a stage depends on the code of its own step alone, and flows/ stays
free of torch). Every body has the signature `run(params, driver)` (tasks/common/driver.py):
the CLI and the Prefect flow call the same function and differ only in the driver they pass.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Step:
    """One pipeline step: what it reads, where it runs, how it is priced, what runs it."""

    name: str
    # params.yaml sections (besides `profile`) whose values decide the step's outputs; each is a
    # DVC params dep of its stage under both profiles, and `--dry-run` prints them.
    sections: tuple[str, ...]
    gpu: bool  # priced per GPU device (tasks/common/cost.py); else one CPU machine
    body: str  # "module:function" of the body, `run(params, driver) -> summary`
    # Shares its units over the pool's workers and their devices (flows/units.py,
    # tasks/common/fanout.py); the body's module provides load_models and process_unit.
    units: bool = False
    # Records each run as an attempt under the body module's attempts_key(params)
    # (tasks/attempt.py). Training records its attempts per stage, in the processes that hold
    # the devices; the report makes nothing to price.
    attempts: bool = False
    # Has a row in the cost ledger. The report is the one step without: it reads the others'
    # envelopes and writes the ledger itself.
    priced: bool = True

    @property
    def pool(self) -> str:
        """The Prefect work pool it runs on; the pools are named after the devices they offer."""
        return "gpu" if self.gpu else "cpu"

    @property
    def module(self) -> str:
        """The module that holds the body (and the unit protocol, the attempts key)."""
        return self.body.partition(":")[0]

    def load(self) -> Callable[..., dict[str, Any]]:
        """The body function, imported now."""
        module, _, function = self.body.partition(":")
        return getattr(importlib.import_module(module), function)


STEPS: tuple[Step, ...] = (
    Step("download", ("storage", "download"), gpu=False, body="tasks.download.step:run",
         attempts=True),
    Step("caption", ("caption",), gpu=True, body="tasks.caption.step:run", units=True,
         attempts=True),
    Step("encode", ("encode",), gpu=True, body="tasks.encode.step:run", units=True,
         attempts=True),
    Step("train", ("train", "cost"), gpu=True, body="tasks.train.step:run"),
    Step("evaluate", ("evaluate",), gpu=True, body="tasks.evaluate.step:run", attempts=True),
    Step("report", ("storage", "cost"), gpu=False, body="tasks.report.step:run", priced=False),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
# The steps with a ledger row, in pipeline order: what the report reads envelopes of.
PRICED: tuple[str, ...] = tuple(s.name for s in STEPS if s.priced)
POOLS: tuple[str, ...] = tuple(dict.fromkeys(s.pool for s in STEPS))


def step(name: str) -> Step:
    """The table's entry for `name`; an unknown name is an error that lists the steps."""
    for entry in STEPS:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown step {name!r}; steps: {list(NAMES)}")

