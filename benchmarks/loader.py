"""Latent loader throughput from S3 shards on this machine: samples/s of 256-px latents.

    python benchmarks/loader.py [--shards 8] [--per-shard 500] [--batch 256] [--batches 40]

Writes synthetic latent shards of the full recipe's shapes (SDXL latents 4x32x32 at 256 px and
ViT-H text tokens 77x1024, both fp16, as the encode step stores them) to a fresh prefix of the
local S3 (needs `make services-up`), streams batches with the training loader, prints a
markdown row for docs/benchmarks.md and deletes what it wrote.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid

import numpy as np

from infra import s3
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.params import load_params
from tasks.train.loader import LatentLoader, LoaderConfig


def write_shards(prefix: str, shards: int, per_shard: int) -> None:
    rng = np.random.default_rng(0)
    for s in range(shards):
        with LocalShard() as out:
            for i in range(per_shard):
                out.write(f"bench-{s}-{i}", {
                    "lat256.npy": npy_bytes(rng.standard_normal((4, 32, 32)).astype(np.float16)),
                    "txtemb.npy": npy_bytes(rng.standard_normal((77, 1024)).astype(np.float16)),
                    "txt": f"caption {s} {i}", "json": {"i": i}})
            out.close()
            commit_shard(out.path, prefix, f"{s:05d}", out.samples)
            out.path.unlink(missing_ok=True)
    write_manifest("bench", prefix)


def measure(manifest, batch: int, batches: int) -> tuple[float, float]:
    """(samples/s over the first pass, which fetches every shard; samples/s once cached)."""
    loader = LatentLoader({"bench": manifest}, LoaderConfig(
        batch_size=batch, resolution=256, cache_bytes=1 << 40))
    start = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    cold = batches * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    warm = batches * batch / (time.perf_counter() - start)
    return cold, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=0, help="default: one pass over the shards")
    args = ap.parse_args()
    params = load_params(profile="demo")
    prefix = params.storage.uri("bench", uuid.uuid4().hex[:10], "latents")
    try:
        start = time.monotonic()
        write_shards(prefix, args.shards, args.per_shard)
        print(f"wrote {args.shards} x {args.per_shard} samples in {time.monotonic() - start:.1f} s")
        from tasks.common.shards import read_manifest

        manifest = read_manifest(prefix)
        batches = args.batches or manifest.samples // args.batch
        cold, warm = measure(manifest, args.batch, batches)
        mb = sum(s.bytes for s in manifest.shards) / manifest.samples / 1e3
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
        print("| samples | kB/sample | batch | first pass (S3 fetch) samples/s | cached samples/s |")
        print("|---|---|---|---|---|")
        print(f"| {batches * args.batch} | {mb:.0f} | {args.batch} | {cold:,.0f} | {warm:,.0f} |")
    finally:
        for uri in list(s3.list_uris(prefix)):
            s3.delete(uri)


if __name__ == "__main__":
    main()
