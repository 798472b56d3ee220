"""Checkpoint folders keyed by what decides the weights: a changed stage and those after it get
new folders; layout settings and unchanged stages keep theirs."""

from __future__ import annotations

import dataclasses

import numpy as np

from infra.s3 import split_uri
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import load_params
from tasks.train.keys import stage_prefix


def _params(s3_prefix):
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, latents_prefix=f"{key}/latents",
                                  runs_prefix=f"{key}/runs")
    train = dataclasses.replace(params.train, datasets=("cc3m",))
    return dataclasses.replace(params, storage=storage, train=train)


def _latents(params, value: float) -> None:
    prefix = params.storage.uri(params.storage.latents_prefix, "cc3m")
    with LocalShard() as out:
        out.write("cc3m-0", {"lat64.npy": npy_bytes(np.full((4, 16, 16), value, np.float16)),
                             "txtemb.npy": npy_bytes(np.ones((77, 64), np.float16)),
                             "txt": "x", "json": {"native_short_side": 300}})
        out.close()
        commit_shard(out.path, prefix, "00000", out.samples)
    write_manifest("cc3m", prefix)


def _with_stage(params, i, **fields):
    stages = list(params.train.stages)
    stages[i] = dataclasses.replace(stages[i], **fields)
    return dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                 stages=tuple(stages)))


def _prefixes(params):
    return [stage_prefix(params, s.name) for s in params.train.stages]


def test_stage_folders_follow_what_decides_the_weights(s3_prefix):
    params = _params(s3_prefix)
    _latents(params, 0.0)
    s1, s2, s3 = _prefixes(params)  # the demo's masked stage and its two unmasked ones
    assert s1.endswith("/runs/demo/stage1-" + s1.rsplit("-", 1)[1]) and "/stage2-" in s2
    assert "/stage3-" in s3
    assert _prefixes(params) == [s1, s2, s3]  # deterministic: nothing changed, nothing moves

    # Stage 3's learning rate: only stage 3 retrains.
    new = _prefixes(_with_stage(params, 2, lr=1e-5))
    assert new[:2] == [s1, s2] and new[2] != s3
    # Stage 2's noise level: stage 2 and the stage after it retrain, stage 1 is kept.
    new1, new2, new3 = _prefixes(_with_stage(params, 1, p_mean=0.0))
    assert new1 == s1 and new2 != s2 and new3 != s3
    # Stage 1's learning rate: all three.
    new1, new2, new3 = _prefixes(_with_stage(params, 0, lr=1e-5))
    assert new1 != s1 and new2 != s2 and new3 != s3
    # The run seed and the model decide the weights too.
    assert _prefixes(dataclasses.replace(params, train=dataclasses.replace(
        params.train, seed=1)))[0] != s1
    # How the work is laid out does not: GPU count, micro-batch, checkpointing, logging.
    layout = dataclasses.replace(params, train=dataclasses.replace(
        params.train, gpus_per_node=2, micro_batch=4, log_every=1, keep_checkpoints=5,
        checkpoint_every_images=8, compile=True, compile_mode="max-autotune"))
    layout = _with_stage(layout, 1, micro_batch=2, activation_checkpointing=True)
    assert _prefixes(layout) == [s1, s2, s3]

    # New latents (a re-encode): every stage that reads them retrains.
    _latents(params, 1.0)
    moved = _prefixes(params)
    assert moved[0] != s1 and moved[1] != s2 and moved[2] != s3
