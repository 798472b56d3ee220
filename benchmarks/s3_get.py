"""S3 GET throughput through infra/s3.py: MB/s of whole-object reads from the local SeaweedFS.

    PYTHONPATH=. python benchmarks/s3_get.py [--objects 4] [--size-mb 85] [--repeats 3]

Puts `--objects` objects of `--size-mb` MB (random bytes; the default is one latent shard of the
loader benchmark: 500 samples x 170 kB) under a fresh prefix of the demo bucket (needs
`make services-up`), reads each back `--repeats` times with `infra.s3.get_bytes` (one GET, the
call the training loader's prefetch thread makes per shard), prints MB/s per pass and the samples/s
that rate would feed at `--sample-kb` per sample, and deletes what it wrote. Nothing else runs in
the process, so this is the GET alone, not the loader.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import uuid

import numpy as np

from infra import s3
from tasks.params import load_params


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=4, help="objects put and read back")
    ap.add_argument("--size-mb", type=float, default=85.0, help="size of each object, MB (1e6 B)")
    ap.add_argument("--repeats", type=int, default=3, help="read passes over all objects")
    ap.add_argument("--sample-kb", type=float, default=170.0,
                    help="kB per latent sample, to express the rate in samples/s")
    return ap


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parser().parse_args(argv)
    params = load_params(profile="demo")
    prefix = params.storage.uri("bench", uuid.uuid4().hex[:10], "s3-get")
    size = int(args.size_mb * 1e6)
    rng = np.random.default_rng(0)
    uris = [s3.join(prefix, f"{i:05d}.bin") for i in range(args.objects)]
    try:
        for uri in uris:
            s3.put_bytes(uri, rng.bytes(size))
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for uri in uris:
                if len(s3.get_bytes(uri)) != size:
                    raise RuntimeError(f"{uri}: short read")
            rates.append(args.objects * size / 1e6 / (time.perf_counter() - start))
    finally:
        for uri in list(s3.list_uris(prefix + "/")):
            s3.delete(uri)
    median = statistics.median(rates)
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"endpoint {s3.client().meta.endpoint_url}")
    print(f"{args.objects} objects x {args.size_mb:g} MB, {args.repeats} passes: "
          + ", ".join(f"{r:,.0f}" for r in rates) + " MB/s")
    print(f"median {median:,.0f} MB/s = {median * 1e3 / args.sample_kb:,.0f} samples/s "
          f"at {args.sample_kb:g} kB/sample")
    return {"median_mb_s": median, "min_mb_s": min(rates), "max_mb_s": max(rates)}


if __name__ == "__main__":
    main()
