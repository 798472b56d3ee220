"""The node-local shard cache: two ranks on a node read every shard of an epoch, S3 serves
each shard object once (issue 33, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.multiprocessing as mp

from tasks.common.npy import npy_bytes
from tasks.common.shard_cache import NodeCache
from tasks.common.shards import LocalShard, commit_shard, read_manifest, write_manifest
from tasks.train.loader import LatentLoader, LoaderConfig

SHARDS, PER_SHARD, BATCH = 6, 4, 4  # an epoch: 24 samples, 3 global batches of 2 x 4


def _write(prefix: str) -> None:
    for s in range(SHARDS):
        with LocalShard() as out:
            for i in range(PER_SHARD):
                out.write(f"n-{s}-{i}", {"lat32.npy": npy_bytes(np.full((4, 8, 8), i, np.float16)),
                                         "txtemb.npy": npy_bytes(np.ones((6, 8), np.float16)),
                                         "txt": "x", "json": {}})
            out.close()
            commit_shard(out.path, prefix, f"{s:05d}", out.samples)
    write_manifest("n", prefix)


def _rank(rank: int, prefix: str, folder: str, out: str) -> None:
    manifest = read_manifest(prefix)
    loader = LatentLoader({"n": manifest}, LoaderConfig(
        batch_size=BATCH, resolution=32, rank=rank, world_size=2, window_shards=2,
        node_cache=folder, node_cache_bytes=1 << 30))
    keys = [k for _ in range(3) for k in loader.next_batch()["keys"]]
    Path(out, f"{rank}.json").write_text(json.dumps({"gets": loader.node_cache.gets,
                                                     "keys": keys}))


def test_two_ranks_of_a_node_get_each_shard_from_s3_once(s3_prefix, tmp_path):
    prefix = s3_prefix + "/latents/n"
    _write(prefix)
    mp.start_processes(_rank, args=(prefix, str(tmp_path / "cache"), str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert sum(r["gets"] for r in ranks) == SHARDS  # one GET per shard object for the node
    keys = ranks[0]["keys"] + ranks[1]["keys"]
    assert sorted(keys) == sorted(f"n-{s}-{i}" for s in range(SHARDS) for i in range(PER_SHARD))
    assert len(list((tmp_path / "cache").glob("*.tar"))) == SHARDS


def test_the_cache_evicts_oldest_first_within_its_bound(s3_prefix, tmp_path):
    prefix = s3_prefix + "/latents/n"
    _write(prefix)
    shards = read_manifest(prefix).shards
    cache = NodeCache(tmp_path, max_bytes=2 * max(s.bytes for s in shards))
    for shard in shards[:3]:
        cache.get(shard.uri, shard.sha256)
    kept = {p.stem for p in tmp_path.glob("*.tar")}
    assert kept == {shards[1].sha256, shards[2].sha256}  # the first fetched went first
    assert cache.get(shards[2].uri, shards[2].sha256) and cache.gets == 3  # a hit: no GET
