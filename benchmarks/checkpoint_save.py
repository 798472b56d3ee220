"""Step time while a checkpoint is saved in the background against no save, on this CPU.

    PYTHONPATH=. python -m benchmarks.checkpoint_save [--model demo] [--steps 60] [--every 6]
                                                      [--batch 8]

Runs the production loop (`tasks.train.loop.train`, the real train_step) of one stage of the
given model on synthetic batches twice against the local S3 (needs `make services-up`, or the
MB_STATE_DIR/MB_*_PORT of another world): once with a checkpoint every --every steps, once with
none but the stage's final one. A step's time is from its start to the next step's start, so
the copy of the state off the device between steps counts; a step counts as "during a save"
when a background save thread was alive at its start. Prints a markdown row for
docs/benchmarks.md: median step time without saves, during a save, and the slowdown, then
deletes what it wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import threading
import time
import uuid

import torch

from benchmarks.train_loop import Synthetic
from infra import s3
from tasks.params import load_params
from tasks.train.loop import model_config, train, train_step


def saving() -> bool:
    return any(t.name.startswith("checkpoint-") and t.is_alive() for t in threading.enumerate())


def run(model: str, steps: int, every: int | None, batch: int, run_name: str
        ) -> tuple[list[float], list[float]]:
    """Step times (s) without and during a background save."""
    params = load_params(profile="demo")
    stage = dataclasses.replace(params.train.stages[0], steps=steps, warmup_steps=0)
    train_p = dataclasses.replace(
        params.train, model=model, stages=(stage,), global_batch=batch, micro_batch=batch,
        gpus_per_node=1, nodes=1, log_every=10 ** 6, run_name=run_name,
        checkpoint_every_images=(every or 10 ** 9) * batch, checkpoint_every_min=0)
    params = dataclasses.replace(params, train=train_p)
    marks: list[tuple[float, bool]] = []

    def timed(*args):
        marks.append((time.perf_counter(), saving()))
        return train_step(*args)

    cfg = model_config(train_p, stage)
    data = Synthetic(batch)
    g = torch.Generator().manual_seed(0)  # the batch in this model's shapes (the demo's 16x16)
    data.batch.update(
        latents=torch.randn(batch, cfg.latent_channels, cfg.input_size, cfg.input_size,
                            generator=g).half(),
        text=torch.randn(batch, 77, cfg.caption_dim, generator=g).half())
    train(params, stage.name, open_source=lambda *a: data, step=timed)
    quiet, busy = [], []
    for (t0, in_flight), (t1, _) in zip(marks[3:], marks[4:]):  # past the first steps' warm-up
        (busy if in_flight else quiet).append(t1 - t0)
    return quiet, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    tag = f"bench-ckpt-{uuid.uuid4().hex[:8]}"
    params = load_params(profile="demo")
    try:
        base, _ = run(args.model, args.steps, None, args.batch, tag + "-none")
        quiet, busy = run(args.model, args.steps, args.every, args.batch, tag + "-saves")
    finally:
        root = s3.join(params.storage.uri(params.storage.runs_prefix), tag)
        for name in ("-none", "-saves"):
            for uri in list(s3.list_uris(root + name + "/")):
                s3.delete(uri)
    without, during = statistics.median(base), statistics.median(busy) if busy else float("nan")
    print("| model | batch | threads | step without saves (ms) | step during a save (ms) | "
          "steps during a save | slower |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.batch} | {torch.get_num_threads()} | {without * 1e3:.1f} | "
          f"{during * 1e3:.1f} | {len(busy)} of {len(busy) + len(quiet)} | "
          f"{(during / without - 1) * 100:+.1f} % |  ({platform.processor() or 'cpu'})")


if __name__ == "__main__":
    main()
