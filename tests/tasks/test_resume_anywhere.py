"""Resume anywhere: a stage written on N ranks resumes on M at the same global sample, and over
an epoch every sample in the shards is trained on exactly once (issue 31, item 2)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from infra.s3 import split_uri
from tasks.common.shards import LocalShard, commit_shard, iter_shard, read_manifest, \
    write_manifest
from tasks.common.npy import npy_bytes
from tasks.params import load_params
from tasks.train import checkpoint, keys
from tasks.train.loader import LatentLoader, LoaderConfig
from tasks.train.loop import train, train_step

GLOBAL_BATCH = 12  # divisible by 1, 2 and 3 ranks
SHARDS, PER_SHARD = 6, 8  # 48 samples: an epoch is 4 steps; windows of 4 and 2 shards
STEPS, STOP_AFTER = 6, 2


def _write(prefix: str, name: str, shards: int, per_shard: int, sides=None) -> None:
    rng = np.random.default_rng(len(name))
    for s in range(shards):
        with LocalShard() as out:
            for i in range(per_shard):
                side = sides(s, i) if sides else 300
                out.write(f"{name}-{s}-{i}", {
                    "lat64.npy": npy_bytes(rng.standard_normal((4, 16, 16)).astype(np.float16)),
                    "txtemb.npy": npy_bytes(rng.standard_normal((24, 64)).astype(np.float16)),
                    "txt": "x", "json": {"native_short_side": side}})
            out.close()
            commit_shard(out.path, prefix, f"{s:05d}", out.samples)
    write_manifest(name, prefix)


def _shard_keys(manifest, min_side: int = 0) -> list[str]:
    """The sample keys as the shards themselves hold them (those a stage may train on)."""
    return [key for shard in manifest.shards for key, sample in iter_shard(shard.uri)
            if json.loads(sample["json"])["native_short_side"] >= min_side]


def _global_batches(loaders: list[LatentLoader], count: int) -> list[list[tuple[str, bool]]]:
    """`count` global batches: every rank's slice, in rank order (key, caption dropped)."""
    out = []
    for _ in range(count):
        batch = []
        for loader in loaders:
            b = loader.next_batch()
            batch += list(zip(b["keys"], b["dropped"].tolist()))
        out.append(batch)
    return out


def _ranks(manifests, world: int, **config) -> list[LatentLoader]:
    return [LatentLoader(manifests, LoaderConfig(batch_size=GLOBAL_BATCH // world, resolution=64,
                                                 rank=r, world_size=world, seed=5,
                                                 window_shards=2, **config))
            for r in range(world)]


@pytest.mark.parametrize("before,after", [(1, 2), (2, 1), (2, 3), (3, 2)])
def test_loader_position_is_global_across_rank_counts(s3_prefix, before, after):
    """Two datasets mixed by weight, a size filter, windows of 2 shards: the global batches of
    N ranks, a position saved there and resumed on M ranks, are those of one uninterrupted
    reader, and each dataset's first epoch holds each of its samples once."""
    a, b = s3_prefix + "/latents/a", s3_prefix + "/latents/b"
    _write(a, "a", shards=5, per_shard=7, sides=lambda s, i: 100 if (s + i) % 5 == 0 else 300)
    _write(b, "b", shards=3, per_shard=5)
    manifests = {"a": read_manifest(a), "b": read_manifest(b)}
    config = {"weights": {"a": 0.7, "b": 0.3}, "min_short_side": 256}
    reference = _global_batches(_ranks(manifests, 1, **config), 10)

    first = _ranks(manifests, before, **config)
    got = _global_batches(first, 4)
    states = [json.loads(json.dumps(loader.state_dict())) for loader in first]
    assert all(state == states[0] for state in states)  # one position, not one per rank
    resumed = _ranks(manifests, after, **config)
    for loader in resumed:
        loader.load_state_dict(states[0])
    got += _global_batches(resumed, 6)
    assert got == reference

    order = [key for batch in got for key, _ in batch]
    for name in ("a", "b"):
        stored = _shard_keys(manifests[name], min_side=256)
        epoch = [k for k in order if k.startswith(f"{name}-")][:len(stored)]
        assert len(stored) >= 1 and sorted(epoch) == sorted(stored)
    assert resumed[0].filtered > 0  # the filter did drop samples


def test_a_position_saved_per_rank_is_refused_with_a_reason(s3_prefix):
    prefix = s3_prefix + "/latents/a"
    _write(prefix, "a", shards=1, per_shard=4)
    loader = _ranks({"a": read_manifest(prefix)}, 1)[0]
    old = [{"streams": {"a": [0, 0, 3]}, "rng": {}}]  # what checkpoints held before
    with pytest.raises(ValueError, match="per rank"):
        loader.load_state_dict(old)
    other = _ranks({"a": read_manifest(prefix)}, 1)[0].state_dict()
    other["order"]["window_shards"] = 3
    with pytest.raises(ValueError, match="another order"):
        loader.load_state_dict(other)


# --- the production loop on gloo ranks ------------------------------------------------------


class Stop(Exception):
    """Ends a run after a number of steps, as a killed worker would (its last checkpoint
    is the step before)."""


def _params(s3_prefix, world: int):
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, latents_prefix=f"{key}/latents",
                                  runs_prefix=f"{key}/runs")
    stage = dataclasses.replace(params.train.stages[0], steps=STEPS, warmup_steps=0)
    # Micro-batch 6 on one rank: two accumulation steps cut the global batch as two ranks do.
    train_p = dataclasses.replace(params.train, stages=(stage,), datasets=("cc3m",),
                                  dataset_weights={}, global_batch=GLOBAL_BATCH,
                                  micro_batch=6 if world == 1 else GLOBAL_BATCH // world,
                                  gpus_per_node=world, checkpoint_every_images=GLOBAL_BATCH,
                                  log_every=1000)
    return dataclasses.replace(params, storage=storage, train=train_p)


def _rank_main(rank: int, world: int, port: int, params, out: str, stop_after: int) -> None:
    if world > 1:  # what torchrun sets; one rank runs in the test's own process
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
    consumed: list[list[str]] = []

    def recording_step(precond, loss_fn, optimizer, batches, *args):
        if len(consumed) == stop_after:
            raise Stop
        consumed.append([k for b in batches for k in b["keys"]])
        return train_step(precond, loss_fn, optimizer, batches, *args)

    summary = None
    try:
        summary = train(params, params.train.stages[0].name, step=recording_step)
    except Stop:
        pass
    Path(out, f"rank{rank}.json").write_text(json.dumps({"consumed": consumed,
                                                         "summary": summary}))
    if dist.is_initialized():
        dist.destroy_process_group()


def _run(params, world: int, out: Path, stop_after: int) -> list[list[str]]:
    """Train on `world` gloo ranks; the global batches the steps consumed, in rank order."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out.mkdir()
    if world == 1:
        _rank_main(0, 1, port, params, str(out), stop_after)
    else:
        mp.start_processes(_rank_main, args=(world, port, params, str(out), stop_after),
                           nprocs=world, join=True, start_method="spawn")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    steps = len(ranks[0]["consumed"])
    assert all(len(r["consumed"]) == steps for r in ranks)
    return [[k for r in ranks for k in r["consumed"][s]] for s in range(steps)], ranks[0]


@pytest.mark.parametrize("before,after", [(1, 2), (2, 1), (2, 3)])
def test_training_resumes_on_another_rank_count_at_the_same_sample(s3_prefix, tmp_path, before,
                                                                   after):
    written, resumed_on = _params(s3_prefix, before), _params(s3_prefix, after)
    prefix = written.storage.uri(written.storage.latents_prefix, "cc3m")
    _write(prefix, "cc3m", SHARDS, PER_SHARD)
    manifest = read_manifest(prefix)
    name = written.train.stages[0].name
    assert keys.stage_prefix(written, name) == keys.stage_prefix(resumed_on, name)

    first, _ = _run(written, before, tmp_path / "first", STOP_AFTER)
    assert checkpoint.latest(keys.stage_prefix(written, name)).step == STOP_AFTER
    second, rank0 = _run(resumed_on, after, tmp_path / "second", STEPS)
    assert rank0["summary"]["resumed_from_step"] == STOP_AFTER
    assert rank0["summary"]["steps"] == STEPS and rank0["summary"]["gpus"] == after
    order = [k for batch in first + second for k in batch]

    # The same global samples, in the same order, as one uninterrupted reader of the stage.
    seed = written.train.stage_seed(written.train.stages[0])
    reader = LatentLoader({"cc3m": manifest}, LoaderConfig(batch_size=GLOBAL_BATCH,
                                                           resolution=64, seed=seed))
    assert order == [k for _ in range(STEPS) for k in reader.next_batch()["keys"]]
    # The first epoch is every sample of the shards once, nothing lost across the resume.
    stored = _shard_keys(manifest)
    assert sorted(order[:len(stored)]) == sorted(stored) and len(set(stored)) == len(stored)


def test_accumulation_follows_the_ranks_that_run_the_stage():
    # One function for the micro-batches per optimizer step: the loop passes the ranks actually
    # running, so a stage written on 1 rank and resumed on 2 keeps its global batch.
    params = load_params(profile="demo")
    tp = dataclasses.replace(params.train, global_batch=32, micro_batch=8)
    stage = tp.stages[0]
    assert tp.accumulation(stage) == 32 // (8 * tp.world)
    assert tp.accumulation(stage, 2) == 2 and tp.accumulation(stage, 4) == 1


def test_sigma_data_is_declared_once():
    from model.edm import SIGMA_DATA, EDMLoss, EDMPrecond
    from tasks.export.pipeline import MicroDiTTransformer

    assert EDMLoss().sigma_data == SIGMA_DATA
    assert EDMPrecond(torch.nn.Identity()).sigma_data == SIGMA_DATA
    from model.config import preset

    tiny = dataclasses.asdict(preset("tiny"))
    assert MicroDiTTransformer(microdit=tiny).precond.sigma_data == SIGMA_DATA
