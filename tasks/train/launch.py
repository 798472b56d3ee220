"""Entry point of one training stage in every rank: `torchrun ... -m tasks.train.launch`.

    python -m tasks.train.launch --stage stage1 [--profile demo] [--params F]
                                 [--parent-run-id ID] [--summary out.json]
Started by tasks/train/step.py, every rank reads the params its parent resolved from the
environment (text and hash, tasks.params.resolved_env); --params and --profile serve a launch by
hand. Rank 0 logs to MLflow, draws the sample grid from the EMA weights and writes the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from model.io import from_pretrained
from tasks.params import Params, load_params, params_from_env
from tasks.train.checkpoint import download
from tasks.train.loop import PREEMPTED, Dist, Preempted, pick_device, train


def grid_device(params: Params) -> torch.device:
    """Where rank 0 trained: the sample grid runs there, not on the CPU."""
    return pick_device(params.train, Dist(local_rank=int(os.environ.get("LOCAL_RANK", "0"))))


def stage_grid(params: Params, checkpoint_uri: str) -> bytes:
    """The sample grid of a checkpoint's EMA weights, drawn on the training device (the
    encoders follow the model there): 8 GPUs never wait on a CPU-drawn 512 px grid."""
    from tasks.train.tracking import sample_grid

    with tempfile.TemporaryDirectory() as tmp:
        root = download(checkpoint_uri, Path(tmp))
        return sample_grid(params, from_pretrained(root / "ema").to(grid_device(params)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--params", default=None)
    ap.add_argument("--parent-run-id", default=None)
    ap.add_argument("--summary", type=Path, default=None)
    ap.add_argument("--no-mlflow", action="store_true", help="skip MLflow (benchmarks, tests)")
    args = ap.parse_args(argv)
    params = params_from_env() or load_params(args.params, args.profile)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    run = None
    if main_rank and not args.no_mlflow:
        from tasks.train.tracking import StageRun

        run = StageRun(params, args.stage, args.parent_run_id)
    try:
        summary = train(params, args.stage, run.log if run else None)
    except Preempted as notice:
        return preempted(notice, run, args.summary)
    if main_rank:
        if run:
            # No train.sample_prompts: no grid (and no encoders to load).
            grid = stage_grid(params, summary["checkpoint"]) if params.train.sample_prompts \
                else None
            run.finish(params, summary, grid)
            summary["mlflow_run_id"] = run.run_id
        if args.summary:
            args.summary.write_text(json.dumps(summary, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def preempted(notice: Preempted, run, summary: Path | None) -> int:
    """A preempted stage: rank 0 marks its MLflow run KILLED with a preempted tag, and the
    first rank of each node leaves the record where the launcher reads it (torchrun's own exit
    status does not tell a preemption from a failure); the exit status is PREEMPTED."""
    if run:
        try:
            run.metrics.flush()
            run.client.set_tag(run.run_id, "preempted", f"step {notice.step}")
            run.client.set_terminated(run.run_id, status="KILLED")
            run.finished = True
        except Exception as err:  # noqa: BLE001 - the checkpoint is what matters
            print(f"warning: MLflow run not marked preempted: {err}", file=sys.stderr)
    if summary and os.environ.get("LOCAL_RANK", "0") == "0":
        summary.write_text(json.dumps(notice.record(), indent=2))
    return PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
