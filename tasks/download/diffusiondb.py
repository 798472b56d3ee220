"""DiffusionDB: a metadata parquet (image_name, prompt, part_id, image_nsfw, prompt_nsfw) and
part zips of images; caption = prompt; rows with an NSFW score above nsfw_max are dropped
(counted as `nsfw`).

Two upstream variants (docs/sources.md): DiffusionDB 2M (metadata.parquet,
images/part-NNNNNN.zip of PNG) and DiffusionDB Large (metadata-large.parquet, parts 1-10000 under
diffusiondb-large-part-1/ and 10001-14000 under diffusiondb-large-part-2/, lossless WebP).

`fraction` takes the leading share of the parts, `max_samples` caps the rows across them. The
metadata is staged in the scratch folder (825 MB for Large) and the plan streams it: a first
pass reads only `part_id` (row counts per part), a second yields one part's archive at a time
as its rows go by, so memory holds one record batch and one part, never the table (14M rows
in Large). Upstream files list each part's rows together; a file that does not is read once
per window of parts (WINDOW_ROWS rows at most), which stays bounded in memory but not linear.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.common.fetch import resolve
from tasks.download.config import DiffusionDBParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, match_selected, take

DATASET = "diffusiondb"
COLUMNS = ["image_name", "prompt", "part_id", "image_nsfw", "prompt_nsfw"]
LARGE_FIRST_FOLDER_LAST_PART = 10000  # parts above it live in diffusiondb-large-part-2/
BATCH_ROWS = 65536
WINDOW_ROWS = 1 << 20  # rows held at once when a file does not list each part's rows together


def part_name(part_id: int) -> str:
    return f"part-{part_id:06d}"


def part_url(parts_url: str, part_id: int, variant: str) -> str:
    if variant == "large":
        folder = 1 if part_id <= LARGE_FIRST_FOLDER_LAST_PART else 2
        return f"{parts_url}/diffusiondb-large-part-{folder}/{part_name(part_id)}.zip"
    return f"{parts_url}/{part_name(part_id)}.zip"


@dataclass(frozen=True)
class PartPlan:
    """Which parts the plan takes, how many of each part's rows (file order), and whether the
    file lists each part's rows together."""

    rows: dict[int, int]  # part id -> rows taken, parts in ascending order
    grouped: bool


def part_plan(metadata: pq.ParquetFile, source: DiffusionDBParams) -> PartPlan:
    """First pass, `part_id` only: rows per part, then fraction of the parts and max_samples."""
    counts: Counter = Counter()
    grouped, last = True, None
    for batch in metadata.iter_batches(batch_size=BATCH_ROWS, columns=["part_id"]):
        column = batch.column("part_id")
        if not len(column):
            continue
        # Streamable when the runs of equal part ids ascend through the file (upstream order).
        starts = pc.not_equal(column.slice(1), column.slice(0, len(column) - 1))
        runs = [column[0].as_py()] + pc.filter(column.slice(1), starts).to_pylist()
        if last is not None and runs[0] == last:
            runs = runs[1:]
        if runs and last is not None and runs[0] < last:
            grouped = False
        if any(b < a for a, b in zip(runs, runs[1:])):
            grouped = False
        last = column[len(column) - 1].as_py()
        values = pc.value_counts(column)
        counts.update(dict(zip(values.field("values").to_pylist(),
                               values.field("counts").to_pylist())))
    rows: dict[int, int] = {}
    left = source.max_samples
    for part in take(sorted(counts), source.fraction, None):
        n = counts[part] if left is None else min(counts[part], left)
        if n <= 0:
            break
        rows[part] = n
        left = None if left is None else left - n
    return PartPlan(rows, grouped)


def _batches(metadata: pq.ParquetFile, parts: list[int]) -> Iterator[list[dict[str, Any]]]:
    """Rows of the given parts in file order, one filtered record batch at a time."""
    wanted = pa.array(parts, type=metadata.schema_arrow.field("part_id").type)
    for batch in metadata.iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS):
        kept = batch.filter(pc.is_in(batch.column("part_id"), value_set=wanted))
        if kept.num_rows:
            yield kept.to_pylist()


def _part_rows(metadata: pq.ParquetFile, plan: PartPlan) -> Iterator[tuple[int, list[dict]]]:
    """(part, its taken rows) in ascending part order, holding one part (or one window)."""
    if plan.grouped:
        current, rows = None, []
        for batch in _batches(metadata, sorted(plan.rows)):
            for row in batch:
                if row["part_id"] != current:
                    if rows:
                        yield current, rows
                    current, rows = row["part_id"], []
                if len(rows) < plan.rows[current]:
                    rows.append(row)
        if rows:
            yield current, rows
        return
    window: list[int] = []
    for part in sorted(plan.rows) + [None]:
        if part is not None and sum(plan.rows[p] for p in window) + plan.rows[part] <= WINDOW_ROWS:
            window.append(part)
            continue
        if window:
            by_part: dict[int, list[dict]] = {p: [] for p in window}
            for batch in _batches(metadata, window):
                for row in batch:
                    if len(by_part[row["part_id"]]) < plan.rows[row["part_id"]]:
                        by_part[row["part_id"]].append(row)
            for p in window:
                yield p, by_part.pop(p)
        window = [part] if part is not None else []


def part_archive(part: int, rows: list[dict[str, Any]], source: DiffusionDBParams,
                 parts_url: str) -> Archive:
    url = part_url(parts_url, part, source.variant)
    selected: dict[str, Item] = {}
    for row in rows:
        stem = PurePosixPath(row["image_name"]).name.partition(".")[0]
        nsfw = max(row["image_nsfw"] or 0.0, row["prompt_nsfw"] or 0.0) > source.nsfw_max
        prompt = row["prompt"] or ""
        selected.setdefault(stem, Item(
            sample_key(DATASET, stem), row["image_name"], prompt.strip(), url,
            skip="nsfw" if nsfw else valid_caption(prompt, required=True),
            extra={"part_id": part, "image_nsfw": row["image_nsfw"],
                   "prompt_nsfw": row["prompt_nsfw"]}))
    return Archive(part_name(part), url, "zip", selected)


def plan(metadata: pq.ParquetFile, source: DiffusionDBParams, parts_url: str,
         parts: PartPlan | None = None) -> Iterator[Archive]:
    """The part archives to fetch, in part order, built as the metadata streams past."""
    for part, rows in _part_rows(metadata, parts or part_plan(metadata, source)):
        yield part_archive(part, rows, source, parts_url)


def download(job: Job, source: DiffusionDBParams) -> dict[str, Any]:
    name = PurePosixPath(resolve(source.metadata)).name or "metadata.parquet"
    path: Path = job.transfer.fetch_archive(source.metadata, job.scratch / name)
    metadata = pq.ParquetFile(path)
    parts = part_plan(metadata, source)
    job.bar.reset(total=sum(parts.rows.values()))
    archives = plan(metadata, source, resolve(source.parts).rstrip("/"), parts)
    outcome = download_archives(job, archives, match_selected, None)
    metadata.close()
    if path.is_relative_to(job.scratch):
        path.unlink(missing_ok=True)  # kept after a failure: the rerun plans from it again
    return outcome
