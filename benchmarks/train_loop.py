"""The production training loop on real latent shards against the same loop on synthetic
tensors, with the device step replaced by a fixed sleep (what a GPU step costs), on this CPU.

    PYTHONPATH=. python -m benchmarks.train_loop [--sleep-ms 200 50] [--batch 256 64]
                                                 [--shards 12] [--per-shard 500] [--repeats 3]

Writes latent shards of the full recipe's stage-1 shapes (4x32x32 fp16 latents at 256 px and a
77x1024 fp16 ViT-H caption embedding per sample, ~170 kB) to a fresh prefix of the local S3
(needs `make services-up`), then runs `tasks.train.loop.train` for one stage twice per repeat:
once reading those shards through the latent loader (every shard read from S3 for the first
time: the streaming case of a corpus larger than the cache), once on one synthetic batch of
the same shapes. In both the step is `time.sleep(X)`; everything else is the production loop
(input thread, host-to-device path, EMA of a tiny model, logging, the stage's final
checkpoint after the timed steps). The rate is images/s from the second logged step to the
last, so start-up and the first window's fetch are outside it. Each --sleep-ms runs at the
--batch in the same position: a GPU step of 200 ms trains ~256 images of stage 1, one of 50 ms
~64. Prints a markdown row per setting for docs/benchmarks.md and deletes what it wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
import uuid
from typing import Any

import torch

from benchmarks.loader import write_shards
from infra import s3
from tasks.params import Params, load_params
from tasks.train.loop import train


class Synthetic:
    """One fixed batch of the loader's shapes and dtype, handed out again and again."""

    corrupt: dict[str, str] = {}
    filtered = 0

    def __init__(self, batch: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.batch = {"latents": torch.randn(batch, 4, 32, 32, generator=g).half(),
                      "text": torch.randn(batch, 77, 1024, generator=g).half(),
                      "keys": [f"synthetic-{i}" for i in range(batch)]}

    def next_batch(self) -> dict[str, Any]:
        return dict(self.batch)

    def state_dict(self) -> dict[str, Any]:
        return {}


def sleep_step(ms: float):
    """The device step: a fixed wait that, like a GPU step, leaves the host's cores free."""
    zero = torch.zeros(())

    def step(*_args) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(ms / 1e3)
        return zero, zero

    return step


def bench_params(prefix_key: str, run: str, batch: int, steps: int) -> Params:
    params = load_params(profile="demo")
    storage = dataclasses.replace(params.storage, latents_prefix=f"{prefix_key}/latents",
                                  runs_prefix=f"{prefix_key}/runs")
    stage = dataclasses.replace(params.train.stages[0], name="bench", resolution=256,
                                steps=steps, datasets=("bench",), min_short_side=0)
    train_p = dataclasses.replace(params.train, run_name=run, stages=(stage,), model="tiny",
                                  model_overrides={"caption_dim": 1024}, latent_downscale=8,
                                  datasets=("bench",), dataset_weights={}, global_batch=batch,
                                  micro_batch=batch, gpus_per_node=1, nodes=1, log_every=2,
                                  checkpoint_every_images=1 << 40)
    return dataclasses.replace(params, storage=storage, train=train_p)


def loop_rate(params: Params, ms: float, synthetic: bool) -> float:
    """Images/s of the loop between its second logged step and its last."""
    marks: list[tuple[int, float]] = []
    batch = params.train.global_batch
    kwargs = {"open_source": lambda *_: Synthetic(batch)} if synthetic else {}
    train(params, "bench", lambda metrics, step: marks.append((step, time.perf_counter())),
          step=sleep_step(ms), **kwargs)
    (first, t0), (last, t1) = marks[1], marks[-1]
    return (last - first) * batch / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sleep-ms", type=float, nargs="+", default=[200.0, 50.0])
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if len(args.batch) != len(args.sleep_ms):
        ap.error("give one --batch per --sleep-ms")
    key = f"bench/{uuid.uuid4().hex[:10]}"
    params = load_params(profile="demo")
    root = params.storage.uri(key)
    try:
        write_shards(params.storage.uri(key, "latents", "bench"), args.shards, args.per_shard)
        samples = args.shards * args.per_shard
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads "
              f"{torch.get_num_threads()}; {samples} samples in {args.shards} shards")
        print("| step (sleep) | batch | synthetic images/s | shards images/s | shards / synthetic "
              "(median of runs) |")
        print("|---|---|---|---|---|")
        for ms, batch in zip(args.sleep_ms, args.batch):
            steps = samples // batch  # one epoch: every shard read from S3 once, no cache hit
            rates: dict[str, list[float]] = {"synthetic": [], "shards": []}
            for r in range(args.repeats):
                for kind in ("synthetic", "shards"):
                    run = f"{kind}-{int(ms)}-{r}"
                    rates[kind].append(loop_rate(bench_params(key, run, batch, steps), ms,
                                                 kind == "synthetic"))
            ratios = [b / a for a, b in zip(rates["synthetic"], rates["shards"])]
            print(f"| {ms:g} ms | {batch} | {' / '.join(f'{v:,.0f}' for v in rates['synthetic'])}"
                  f" | {' / '.join(f'{v:,.0f}' for v in rates['shards'])} | "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |",
                  flush=True)
    finally:
        for uri in list(s3.list_uris(root + "/")):
            s3.delete(uri)


if __name__ == "__main__":
    main()
