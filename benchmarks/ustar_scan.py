"""Shard scan rate in memory: the plain-ustar fast path against tarfile, samples/s and MB/s.

    PYTHONPATH=. python benchmarks/ustar_scan.py [--samples 500] [--repeats 5]

Builds one latent shard of the full recipe's shapes with the shard writer (LocalShard): per
sample a 4x32x32 fp16 latent (256 px), a 77x1024 fp16 caption embedding, a caption and a JSON
record, about 170 kB. It then times grouping that shard's bytes into samples two ways:
`iter_tar_bytes` (tasks/common/shards.py: `scan_ustar` reads the headers directly; this is what
the training loader in tasks/train/loader.py runs on every shard it fetches) and
`iter_tar_samples` (tarfile, the fallback for any other layout). Both must yield the same
samples. No S3, no numpy decoding: the scan alone.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tasks.common.npy import npy_bytes
from tasks.common.shards import LocalShard, iter_tar_bytes, iter_tar_samples, scan_ustar


def shard_bytes(samples: int, folder: Path) -> bytes:
    rng = np.random.default_rng(0)
    with LocalShard(folder) as out:
        for i in range(samples):
            out.write(f"bench-{i}", {
                "lat256.npy": npy_bytes(rng.standard_normal((4, 32, 32)).astype(np.float16)),
                "txtemb.npy": npy_bytes(rng.standard_normal((77, 1024)).astype(np.float16)),
                "txt": f"caption {i}", "json": {"i": i}})
        out.close()
    return out.path.read_bytes()


def rate(scan: Callable[[], Iterator], samples: int, repeats: int) -> list[float]:
    """samples/s of `repeats` full scans."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(1 for _ in scan())
        rates.append(count / (time.perf_counter() - start))
        if count != samples:
            raise RuntimeError(f"scanned {count} samples, wrote {samples}")
    return rates


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=500, help="samples in the shard")
    ap.add_argument("--repeats", type=int, default=5, help="timed scans per reader")
    return ap


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = shard_bytes(args.samples, Path(tmp))
    if scan_ustar(data) is None:
        raise RuntimeError("the shard writer no longer writes plain ustar: no fast path")

    def fast_scan() -> Iterator:
        return iter_tar_bytes(data)

    def tar_scan() -> Iterator:
        return iter_tar_samples(io.BytesIO(data))

    if list(fast_scan()) != list(tar_scan()):
        raise RuntimeError("the ustar scan and tarfile disagree")
    fast = rate(fast_scan, args.samples, args.repeats)
    tar = rate(tar_scan, args.samples, args.repeats)
    kb = len(data) / args.samples / 1e3
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores; "
          f"shard: {args.samples} samples, {len(data) / 1e6:.1f} MB, {kb:.0f} kB/sample")
    print("| reader | samples/s (median of %d) | MB/s | range samples/s |" % args.repeats)
    print("|---|---|---|---|")
    for name, rates in (("ustar scan (iter_tar_bytes)", fast), ("tarfile (iter_tar_samples)", tar)):
        median = statistics.median(rates)
        print(f"| {name} | {median:,.0f} | {median * kb / 1e3:,.0f} | "
              f"{min(rates):,.0f}-{max(rates):,.0f} |")
    return {"ustar_samples_s": statistics.median(fast), "tarfile_samples_s": statistics.median(tar)}


if __name__ == "__main__":
    main()
