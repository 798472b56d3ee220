"""JourneyDB work plan from a large annotation file: rows/s and peak memory of the planner.

    python benchmarks/plan_journeydb.py [--rows 2000000] [--per-archive 20000]

Writes annotations in JourneyDB's layout (a .jsonl.tgz of records with img_path
"./<archive>/<id>.jpg" and a ~120-character prompt; archives interleaved, since nothing promises
file order) to a temporary folder, then plans it in a fresh child process
(`tasks.download.journeydb.split` then `plan`, every archive, Items built) so the peak RSS is the
planner's alone. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.child import generate_then_measure

WORDS = np.array("a photo of the red blue cat dog castle forest city at night in style "
                 "by artstation trending highly detailed octane render 8k portrait".split())


def write_annotations(path: Path, rows: int, per_archive: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    archives = max(1, rows // per_archive)
    lines = io.BytesIO()
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        words = WORDS[rng.integers(0, len(WORDS), size=(n, 20))]
        where = rng.integers(0, archives, size=n)
        for i in range(n):
            record = {"img_path": f"./{where[i]:03d}/{start + i:08x}.jpg",
                      "prompt": " ".join(words[i])}
            lines.write(json.dumps(record).encode() + b"\n")
    data = lines.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("train_anno_realease_repath.jsonl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def measure(path: Path) -> dict:
    from tasks.download import journeydb

    start = time.monotonic()
    archives = items = 0
    folder = path.parent / "split"
    selected = journeydb.selected_archives(journeydb.split(path, folder), 1.0, None)
    for archive in journeydb.plan(folder, selected, "https://host/imgs"):
        archives += 1
        items += len(archive.selected or {})
    seconds = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"rows": items, "archives": archives,
            "seconds": round(seconds, 2), "rows_per_s": round(items / seconds),
            "peak_rss_mib": round(peak_mib)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--per-archive", type=int, default=20_000)
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's entry
    args = ap.parse_args(argv)
    if args.measure:
        result = measure(args.measure)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_anno_realease_repath.jsonl.tgz"
        result = generate_then_measure(
            __file__, path, lambda: write_annotations(path, args.rows, args.per_archive),
            args.rows)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
