"""Download throughput against the local mirror: images/s per dataset on this machine.

    python benchmarks/download.py [--scale 4] [--shard-size 100] [--threads 4]
    python benchmarks/download.py --fetches 2000 [--threads 4]

Generates a corpus `scale` times the demo size in a temporary folder, serves it on a free
loopback port, downloads every dataset into a fresh S3 prefix (needs the local S3: `make
services-up`), prints a markdown table for docs/benchmarks.md and deletes what it wrote.

With --fetches N it only fetches the corpus's small images N times over, on 1 and on --threads
threads, two ways: `urllib`, a new connection per image (how tasks/common/fetch.py fetched
before it used requests), and `session`, Transfer.fetch_image over its requests.Session
(kept-alive connections). No S3 is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from infra import retry, s3
from infra.mirror.corpus import CorpusSize, generate
from infra.mirror.server import serve_in_thread
from infra.services import http_ok
from tasks.common.fetch import USER_AGENT, Transfer
from tasks.download.config import DATASETS
from tasks.download.run import download, raw_prefix
from tasks.params import load_params


def _urllib_fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read()


def _rate(fetch: Callable[[str], bytes], urls: list[str], threads: int
          ) -> tuple[float, float, int]:
    """(fetches per wall second, client CPU ms per fetch, bytes) of fetching every URL on
    `threads` threads."""
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        size = sum(len(data) for data in pool.map(fetch, urls))
    cpu_ms = (time.process_time() - cpu) * 1000 / len(urls)
    return len(urls) / (time.perf_counter() - start), cpu_ms, size


def _mirror_process(root: Path) -> tuple[subprocess.Popen, str]:
    """The mirror as the service runs it, in a process of its own: served from a thread of this
    process it would share the GIL with the client and time the handover, not the network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "infra.mirror", "serve", "--dir", str(root),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": "."})
    base = f"http://127.0.0.1:{port}"
    if not retry.until(lambda: http_ok(base + "/"), retry.health(30.0)):
        proc.kill()
        raise RuntimeError("the mirror did not start")
    return proc, base


def fetches(count: int, threads: int) -> None:
    """Many small image fetches from a loopback mirror: a connection per image or kept alive."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), seed=0, size=CorpusSize())
        images = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*.jpg"))
        server, base = _mirror_process(Path(tmp))
        urls = [f"{base}/{images[i % len(images)]}" for i in range(count)]
        rows = []
        try:
            for n in sorted({1, threads}):
                for name, fetch in (("urllib", _urllib_fetch),
                                    ("session", Transfer(timeout_s=10).fetch_image)):
                    rate, cpu_ms, size = _rate(fetch, urls, n)
                    rows.append((name, n, rate, cpu_ms, size / len(urls)))
        finally:
            server.terminate()
            server.wait()
    print(f"\n{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"{count} fetches of {len(images)} distinct images\n")
    print("| client | threads | fetches/s | client CPU ms/fetch | mean image bytes |")
    print("|---|---|---|---|---|")
    for name, n, rate, cpu_ms, mean in rows:
        print(f"| {name} | {n} | {rate:.0f} | {cpu_ms:.2f} | {mean:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--fetches", type=int, default=0,
                    help="only time this many small image fetches, urllib vs the session")
    args = ap.parse_args()
    if args.fetches:
        fetches(args.fetches, args.threads)
        return

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
