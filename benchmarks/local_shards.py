"""Latent shards on local disk for the training loader, where no S3 server is reachable.

The GPU machine has no S3, so the loader benchmark of the GPU suite writes shards of the
encode step's format (webdataset tars of `lat256.npy` 4x32x32 and `txtemb.npy` 77x1024, fp16)
to a local folder and lets `tasks.train.loader.LatentLoader` read them by path. Only the fetch
changes (`local_fetch`): decoding, shuffling, mixing and batching are the loader's own.

    python -m benchmarks.local_shards DIR [--shards 8] [--per-shard 500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

import tasks.train.loader as loader_module
from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, Manifest, ShardRecord, iter_tar_bytes, file_digest

MANIFEST_NAME = "manifest.json"


def write_local_shards(root: Path, shards: int, per_shard: int, caption_len: int = 77,
                       caption_dim: int = 1024, latent_side: int = 32) -> Manifest:
    """Write `shards` tars of `per_shard` random samples under root and their manifest."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for s in range(shards):
        with LocalShard(tmp_dir=root) as out:
            for i in range(per_shard):
                out.write(f"bench-{s}-{i}", {
                    "lat256.npy": npy_bytes(rng.standard_normal(
                        (4, latent_side, latent_side), dtype=np.float32).astype(np.float16)),
                    "txtemb.npy": npy_bytes(rng.standard_normal(
                        (caption_len, caption_dim), dtype=np.float32).astype(np.float16)),
                    "txt": f"caption {s} {i}", "json": {"i": i, "native_short_side": 512}})
        path = out.path.rename(root / f"{s:05d}.tar")
        records.append(ShardRecord(name=f"{s:05d}", uri=str(path), samples=out.samples,
                                   bytes=path.stat().st_size, sha256=file_digest(path)))
    manifest = Manifest(dataset="bench", prefix=str(root), shards=tuple(records))
    (root / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest


def read_local_manifest(root: Path) -> Manifest:
    return Manifest.from_json(json.loads((root / MANIFEST_NAME).read_text()))


def _iter_local_shard(path: str, errors: list[str] | None = None
                      ) -> Iterator[tuple[str, dict[str, bytes]]]:
    # The same tar decoding as tasks.common.shards.iter_shard, over a file instead of S3 bytes.
    yield from iter_tar_bytes(Path(path).read_bytes(), errors)


@contextlib.contextmanager
def local_fetch() -> Iterator[None]:
    """Within the block, LatentLoader reads shard URIs as local file paths."""
    original = loader_module.iter_shard
    loader_module.iter_shard = _iter_local_shard
    try:
        yield
    finally:
        loader_module.iter_shard = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--caption-dim", type=int, default=1024)
    ap.add_argument("--latent-side", type=int, default=32)
    args = ap.parse_args()
    start = time.monotonic()
    manifest = write_local_shards(args.root, args.shards, args.per_shard,
                                  caption_dim=args.caption_dim, latent_side=args.latent_side)
    print(f"wrote {manifest.samples} samples in {len(manifest.shards)} shards under {args.root} "
          f"in {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
