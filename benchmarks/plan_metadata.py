"""DiffusionDB work plan from a large metadata parquet: rows/s and peak memory of the planner.

    python benchmarks/plan_metadata.py [--rows 2000000] [--per-part 1000] [--shuffled]

Writes a metadata file in DiffusionDB's schema (image_name, prompt of ~120 characters, part_id,
image_nsfw, prompt_nsfw; `per-part` rows per part, upstream order or shuffled) to a temporary
folder, then plans it in a fresh child process (`tasks.download.diffusiondb.plan`, every part,
Items built) so the peak RSS is the planner's alone, not the generator's. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.child import generate_then_measure

WORDS = np.array("a photo of the red blue cat dog castle forest city at night in style "
                 "by artstation trending highly detailed octane render 8k portrait".split())


def write_metadata(path: Path, rows: int, per_part: int, shuffled: bool, seed: int = 0) -> None:
    """`rows` rows in chunks of 250,000, so generating stays small too."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(rows) if shuffled else np.arange(rows)
    writer = None
    for start in range(0, rows, 250_000):
        index = order[start:start + 250_000]
        words = WORDS[rng.integers(0, len(WORDS), size=(len(index), 20))]
        table = pa.table({
            "image_name": [f"{i:08x}-{i % 7919:04d}.webp" for i in index],
            "prompt": [" ".join(w) for w in words],
            "part_id": pa.array(index // per_part + 1, type=pa.uint16()),
            "image_nsfw": pa.array(rng.random(len(index)) * 0.3, type=pa.float32()),
            "prompt_nsfw": pa.array(rng.random(len(index)) * 0.3, type=pa.float32()),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def measure(path: Path) -> dict:
    """Plan every part of the file in this process; count archives and items."""
    from tasks.download.config import DiffusionDBParams
    from tasks.download.diffusiondb import part_plan, plan

    source = DiffusionDBParams(enabled=True, variant="large", metadata=str(path), parts="x")
    metadata = pq.ParquetFile(path)
    start = time.monotonic()
    parts = part_plan(metadata, source)
    archives = items = 0
    for archive in plan(metadata, source, "https://host/parts", parts):
        archives += 1
        items += len(archive.selected or {})
    seconds = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    rows = metadata.metadata.num_rows
    return {"rows": rows, "archives": archives, "items": items, "grouped": parts.grouped,
            "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_mib": round(peak_mib)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--per-part", type=int, default=1000)  # DiffusionDB: 1,000 images a part
    ap.add_argument("--shuffled", action="store_true", help="rows not grouped by part")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's entry
    args = ap.parse_args(argv)
    if args.measure:
        result = measure(args.measure)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metadata-large.parquet"
        result = generate_then_measure(
            __file__, path, lambda: write_metadata(path, args.rows, args.per_part, args.shuffled),
            args.rows, {"shuffled": args.shuffled})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
