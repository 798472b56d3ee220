"""Download throughput against the local mirror: images/s per dataset on this machine.

    python benchmarks/download.py [--scale 4] [--shard-size 100] [--threads 4]

Generates a corpus `scale` times the demo size in a temporary folder, serves it on a free
loopback port, downloads every dataset into a fresh S3 prefix (needs the local S3: `make
services-up`), prints a markdown table for docs/benchmarks.md and deletes what it wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from infra import s3
from infra.mirror.corpus import CorpusSize, generate
from infra.mirror.server import serve_in_thread
from tasks.download.config import DATASETS
from tasks.download.run import download, raw_prefix
from tasks.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        generate(Path(tmp), seed=0, size=CorpusSize().scaled(args.scale))
        print(f"corpus x{args.scale} generated in {time.monotonic() - start:.1f} s")
        server, _ = serve_in_thread(Path(tmp))
        os.environ["MB_MIRROR_URL"] = server.base_url
        params = load_params(profile="demo")
        sources = {name: dataclasses.replace(params.download.source(name),
                                             shard_size=args.shard_size) for name in DATASETS}
        params = dataclasses.replace(
            params,
            storage=dataclasses.replace(params.storage,
                                        raw_prefix=f"bench/{uuid.uuid4().hex[:8]}/raw"),
            download=dataclasses.replace(params.download, threads=args.threads, **sources))
        rows = []
        try:
            for name in DATASETS:
                summary = download(params, name)
                rows.append((name, summary["attempted"], summary["succeeded"],
                             summary["seconds"], summary["images_per_s"]))
        finally:
            server.shutdown()
            for name in DATASETS:
                for uri in list(s3.list_uris(raw_prefix(params, name) + "/")):
                    s3.delete(uri)

    print(f"\n{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"threads={args.threads}, shard_size={args.shard_size}, scale={args.scale}\n")
    print("| dataset | images attempted | images kept | seconds | images/s |")
    print("|---|---|---|---|---|")
    for name, attempted, kept, seconds, rate in rows:
        print(f"| {name} | {attempted} | {kept} | {seconds:.1f} | {rate:.1f} |")
    total_images = sum(r[1] for r in rows)
    total_seconds = sum(r[3] for r in rows)
    print(f"| all | {total_images} | {sum(r[2] for r in rows)} | {total_seconds:.1f} | "
          f"{total_images / total_seconds:.1f} |")


if __name__ == "__main__":
    main()
