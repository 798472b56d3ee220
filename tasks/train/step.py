"""Train step: the body `run(params, driver)` that the CLI/DVC and the flow both call.

Each stage runs in a child process (torchrun when more than one GPU or node): a killed worker
is just a rerun, which resumes from the stage's latest checkpoint in S3.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from prefect import task

from infra import s3
from infra.settings import REPO_ROOT
from tasks.common import attempts
from tasks.common.driver import Driver
from tasks.common.memory import device_memory
from tasks.params import Params, resolved_env
from tasks.train import checkpoint, keys


@dataclass(frozen=True)
class Endpoint:
    """Where node 0's torchrun hosts the rendezvous store (published to the other nodes)."""

    host: str
    port: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def node_address() -> str:
    """This node's address as the others reach it: MB_NODE_ADDR, else its hostname's."""
    return os.environ.get("MB_NODE_ADDR") or socket.gethostbyname(socket.gethostname())


# Rank 0's progress line (tasks/train/loop.py): `step N images M loss L R img/s`.
PROGRESS_LINE = re.compile(r"^step (\d+) images (\d+) loss \S+ ([0-9.]+) img/s")


@dataclass(frozen=True)
class Progress:
    """Where a running stage is: its step of total, rank 0's images/s and the time left."""

    stage: str
    step: int
    steps: int
    images_per_s: float
    eta_s: float | None  # s; None until two progress lines have been seen

    def line(self) -> str:
        eta = "unknown" if self.eta_s is None else f"{self.eta_s / 60:.1f} min"
        return (f"{self.stage}: step {self.step} of {self.steps}, "
                f"{self.images_per_s:.0f} img/s, ETA {eta}")


def follow(stream: IO[str], stage: str, steps: int,
           report: Callable[[Progress], None]) -> None:
    """Copy the child's output to this process's line by line and report each progress line.

    The ETA is the steps left at the mean step time between the first line seen and this one
    (data waits and checkpoint uploads included), not the last step's rate alone."""
    first: tuple[int, float] | None = None
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = PROGRESS_LINE.match(line)
        if not match:
            continue
        step, now = int(match[1]), time.monotonic()
        first = first or (step, now)
        eta = ((now - first[1]) / (step - first[0]) * (steps - step)
               if step > first[0] else None)
        report(Progress(stage, step, steps, float(match[3]), eta))


def launch_command(params: Params, stage: str, summary: Path, parent_run_id: str | None,
                   node_rank: int = 0, endpoint: Endpoint | None = None) -> list[str]:
    """The child's command line; the params travel in its environment (resolved_env).

    One process, or torchrun with gpus_per_node processes on each of train.nodes nodes that
    meet at `endpoint` (node 0's store; torchrun --standalone when there is one node)."""
    tp = params.train
    args = ["-m", "tasks.train.launch", "--stage", stage, "--summary", str(summary)]
    if parent_run_id:
        args += ["--parent-run-id", parent_run_id]
    if tp.world == 1:
        return [sys.executable, *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run",
                f"--nproc_per_node={tp.gpus_per_node}"]
    if tp.nodes == 1:
        # One node: torchrun's standalone rendezvous picks a free local port itself.
        return [*torchrun, "--standalone", *args]
    if endpoint is None:
        raise ValueError(f"train.nodes is {tp.nodes}: a multi-node stage needs node 0's "
                         "endpoint (run it through the pipeline flow, flows/nodes.py)")
    return [*torchrun, f"--nnodes={tp.nodes}", f"--node_rank={node_rank}",
            f"--master_addr={endpoint.host}", f"--master_port={endpoint.port}", *args]


class StagePreempted(RuntimeError):
    """The stage's ranks stopped on a preemption notice (exit status PREEMPTED, tasks/train/
    loop.py) and left `record`: the step stopped at and the checkpoint it resumes from."""

    def __init__(self, stage: str, record: dict[str, Any]) -> None:
        self.record = record
        super().__init__(f"training stage {stage} was preempted at step {record.get('step')}; "
                         f"it resumes from step {record.get('resumes_from_step')}")


def run_stage(params: Params, stage: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Train one stage (run_attempt), starting it again each time it is preempted, up to
    train.max_preemptions times: it resumes from its latest checkpoint. Any other failure is
    raised at once, never retried. The summary lists the preemptions."""
    preemptions: list[dict[str, Any]] = []
    while True:
        try:
            result = run_attempt(params, stage, *args, **kwargs)
        except StagePreempted as preempted:
            preemptions.append(preempted.record)
            if len(preemptions) > params.train.max_preemptions:
                raise RuntimeError(f"{preempted}: preempted {len(preemptions)} times, more than "
                                   f"train.max_preemptions ({params.train.max_preemptions})") \
                    from preempted
            print(f"{preempted}: starting it again ({len(preemptions)} of at most "
                  f"{params.train.max_preemptions} preemptions)", file=sys.stderr, flush=True)
            continue
        result["preemptions"] = preemptions
        return result


def run_attempt(params: Params, stage: str, parent_run_id: str | None = None, node_rank: int = 0,
                endpoint: Endpoint | None = None, keep_losses: bool = False,
                progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Train one stage in a child process; returns its summary (losses left out).

    The child gets the params this process resolved as text with its hash, never a path of
    its own choosing: a stage must train what the caller configured. `progress` receives each
    of rank 0's progress lines. On a node other than 0 the summary is what this node held: its
    wall time and peak memory."""
    if params.train.nodes > 1 and endpoint is None:
        raise RuntimeError(f"train.nodes is {params.train.nodes}: a multi-node stage runs through "
                           "the flow (one gpu worker per node), not from the command line")
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = launch_command(params, stage, summary, parent_run_id, node_rank, endpoint)
        env = {**os.environ, **resolved_env(params), "PYTHONPATH": str(REPO_ROOT),
               "MB_NODE_RANK": str(node_rank), "PYTHONUNBUFFERED": "1"}
        # Priced whether it ends or not: a failed or killed attempt adds to the stage's cost.
        with attempts.recorded(keys.stage_prefix(params, stage), params.train.gpus_per_node,
                               node_rank, price_class=params.cost.price_class) as attempt:
            with subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                  text=True, bufsize=1) as child:
                follow(child.stdout, stage, params.train.stage(stage).steps,
                       progress or (lambda _: None))
            if child.returncode != 0 and summary.exists() and \
                    json.loads(summary.read_text()).get("preempted"):
                record = json.loads(summary.read_text())
                # Node 0's record holds the lost work; the other nodes' attempts lose the same
                # steps but price none of them (their records do not carry the step time).
                attempts.preempted(attempt, record.get("lost_steps", 0),
                                   record.get("lost_seconds", 0.0))
                raise StagePreempted(stage, record)
            if child.returncode != 0:
                raise RuntimeError(f"training stage {stage} exited with {child.returncode} on "
                                   f"node {node_rank}; rerun to resume from its latest checkpoint")
        # What the devices were held for (the attempt's record): process start to exit,
        # start-up, data waits, compile, checkpoint uploads and the sample grid included.
        held = attempt["seconds"]
        node = {"node_rank": node_rank, "host": socket.gethostname(),
                "held_seconds": round(held, 3), "attempt": attempt["id"],
                "device_memory": device_memory(), "peak_rss_gib": round(
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20, 3)}
        if node_rank != 0:
            return node
        result = json.loads(summary.read_text())
    result["held_seconds"] = node["held_seconds"]
    result["nodes"] = [node]
    from tasks.train.tracking import log_stage_cost  # MLflow and torch: not in flows/

    log_stage_cost(params, stage, result)
    result["loss_curve_points"] = len(result.get("losses", []))
    if not keep_losses:
        result.pop("losses", None)
    return result


class ProgressArtifact:
    """A stage's progress as a Prefect progress artifact of the running flow run, updated at
    most every `every_s` seconds and on the last step: the UI shows it on the flow run, and
    the pipeline flow logs its description, which `prefect deployment run --watch` prints.
    Outside a flow run (the CLI) nothing is published: there is no run to show it on, and the
    child's progress lines already reach stdout (`follow`)."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._id: Any = None
        self._last = float("-inf")

    def __call__(self, progress: Progress) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.runtime import flow_run

        now = time.monotonic()
        if flow_run.get_id() is None or (now - self._last < self.every_s
                                         and progress.step < progress.steps):
            return
        percent = 100.0 * progress.step / max(progress.steps, 1)
        try:
            if self._id is None:
                self._id = create_progress_artifact(percent, description=progress.line())
            else:
                update_progress_artifact(self._id, percent, progress.line())
        except Exception as err:  # noqa: BLE001 - progress is advisory: never fail a stage on it
            print(f"progress not published: {err}", file=sys.stderr)
        self._last = now


@task(retries=1, retry_delay_seconds=10, task_run_name="train-{stage}", tags=["gpu"])
def train_stage(params: Params, stage: str, parent_run_id: str | None = None,
                keep_losses: bool = False) -> dict[str, Any]:
    """A preempted stage is started again inside (run_stage), so Prefect's retry is for a
    lost worker."""
    return run_stage(params, stage, parent_run_id, keep_losses=keep_losses,
                     progress=ProgressArtifact())


def export_model(params: Params) -> str:
    """The finished run's EMA weights as a diffusers pipeline next to the last stage's
    checkpoint (`<checkpoint>/diffusers/`); kept if already there (the checkpoint is keyed)."""
    from tasks.export.export import EXPORT_SUBFOLDER, export_next_to

    last = params.train.stages[-1].name
    pointer = checkpoint.latest(keys.stage_prefix(params, last))
    if pointer is None:
        raise FileNotFoundError(f"no checkpoint of {last} to export: run the train step first")
    target = s3.join(pointer.uri, EXPORT_SUBFOLDER)
    if s3.exists(s3.join(target, "model_index.json")):
        return target
    return export_next_to(pointer.uri, params)


@task(retries=1, retry_delay_seconds=10, task_run_name="export-diffusers", tags=["gpu"])
def export_task(params: Params) -> str:
    return export_model(params)


def summarize(stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Stage summaries plus what the report prices: the devices held and for how long (each
    stage's process wall time, not just its training loop)."""
    return {"stages": stages, "gpus": max((s["gpus"] for s in stages.values()), default=1),
            "gpu_seconds_per_device": sum(s.get("held_seconds", s["seconds"])
                                          for s in stages.values())}


def write_loss_plots(params: Params, stages: dict[str, dict[str, Any]]) -> None:
    """<out_dir>/plots/loss/<stage>.csv (step, loss) for `dvc plots show`; the losses leave
    the summary (a full stage holds hundreds of thousands)."""
    folder = params.storage.out_path("plots/loss")
    folder.mkdir(parents=True, exist_ok=True)
    for name, stage in stages.items():
        rows = "".join(f"{i},{loss:.6f}\n" for i, loss in enumerate(stage.pop("losses", []), 1))
        (folder / f"{name}.csv").write_text("step,loss\n" + rows)


def train_one(params: Params, stage: str, driver: Driver) -> dict[str, Any]:
    """One stage, on train.nodes machines; each preemption it survived is a warning.
    The losses are kept for DVC's plots only: a full stage holds hundreds of thousands."""
    if params.train.nodes > 1:
        result = driver.train_on_nodes(params, stage)
    else:
        result = driver.task(train_stage, params, stage, driver.parent_run_id,
                             driver.dvc_outputs)
    for i, record in enumerate(result["preemptions"], 1):
        driver.warn(f"train-{stage}: preempted at step {record['step']}, resumed from step "
                   f"{record['resumes_from_step']} ({i} of {len(result['preemptions'])} "
                   "preemptions)")
    return result


def run(params: Params, driver: Driver) -> dict[str, Any]:
    """Every stage in order, then the diffusers export of the last."""
    stages = {s.name: train_one(params, s.name, driver) for s in params.train.stages}
    if driver.dvc_outputs:
        write_loss_plots(params, stages)
    return {**summarize(stages), "diffusers": driver.task(export_task, params)}
