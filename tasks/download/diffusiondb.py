"""DiffusionDB: a metadata parquet (image_name, prompt, part_id, image_nsfw, prompt_nsfw) and
part zips of images; caption = prompt; rows with an NSFW score above nsfw_max are dropped
(counted as `nsfw`).

Two upstream variants (docs/sources.md): DiffusionDB 2M (metadata.parquet,
images/part-NNNNNN.zip of PNG) and DiffusionDB Large (metadata-large.parquet, parts 1-10000 under
diffusiondb-large-part-1/ and 10001-14000 under diffusiondb-large-part-2/, lossless WebP).

`fraction` takes the leading share of the parts, `max_samples` caps the rows across them. The
metadata is staged in the scratch folder (825 MB for Large) and read in record batches, two
columns at a time for the part list, so the whole table is never in memory as Python objects.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.download.config import DiffusionDBParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, match_selected, take
from tasks.download.fetch import resolve

DATASET = "diffusiondb"
COLUMNS = ["image_name", "prompt", "part_id", "image_nsfw", "prompt_nsfw"]
LARGE_FIRST_FOLDER_LAST_PART = 10000  # parts above it live in diffusiondb-large-part-2/
BATCH_ROWS = 65536


def part_name(part_id: int) -> str:
    return f"part-{part_id:06d}"


def part_url(parts_url: str, part_id: int, variant: str) -> str:
    if variant == "large":
        folder = 1 if part_id <= LARGE_FIRST_FOLDER_LAST_PART else 2
        return f"{parts_url}/diffusiondb-large-part-{folder}/{part_name(part_id)}.zip"
    return f"{parts_url}/{part_name(part_id)}.zip"


def _rows(metadata: pq.ParquetFile, parts: list[int]) -> Iterator[dict[str, Any]]:
    """Rows of the selected parts in file order, converted one filtered batch at a time."""
    wanted = pa.array(parts, type=metadata.schema_arrow.field("part_id").type)
    for batch in metadata.iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS):
        kept = batch.filter(pc.is_in(batch.column("part_id"), value_set=wanted))
        yield from kept.to_pylist()


def plan(metadata: pq.ParquetFile, source: DiffusionDBParams, parts_url: str) -> list[Archive]:
    ids: set[int] = set()
    for batch in metadata.iter_batches(batch_size=BATCH_ROWS, columns=["part_id"]):
        ids.update(pc.unique(batch.column("part_id")).to_pylist())
    parts = take(sorted(ids), source.fraction, None)
    by_part: dict[int, list[dict]] = {part: [] for part in parts}
    for row in _rows(metadata, parts):
        by_part[row["part_id"]].append(row)
    rows = take([r for part in parts for r in by_part.pop(part)], 1.0, source.max_samples)
    out, selected, current = [], {}, None
    for row in rows + [None]:
        part = row["part_id"] if row else None
        if part != current and selected:
            url = part_url(parts_url, current, source.variant)
            out.append(Archive(part_name(current), url, "zip", selected))
            selected = {}
        if row is None:
            break
        current = part
        stem = PurePosixPath(row["image_name"]).name.partition(".")[0]
        nsfw = max(row["image_nsfw"] or 0.0, row["prompt_nsfw"] or 0.0) > source.nsfw_max
        prompt = row["prompt"] or ""
        selected.setdefault(stem, Item(
            sample_key(DATASET, stem), row["image_name"], prompt.strip(),
            part_url(parts_url, part, source.variant),
            skip="nsfw" if nsfw else valid_caption(prompt, required=True),
            extra={"part_id": part, "image_nsfw": row["image_nsfw"],
                   "prompt_nsfw": row["prompt_nsfw"]}))
    return out


def download(job: Job, source: DiffusionDBParams) -> dict[str, Any]:
    name = PurePosixPath(resolve(source.metadata)).name or "metadata.parquet"
    path: Path = job.transfer.fetch_archive(source.metadata, job.scratch / name)
    archives = plan(pq.ParquetFile(path), source, resolve(source.parts).rstrip("/"))
    if path.is_relative_to(job.scratch):
        path.unlink(missing_ok=True)
    job.bar.reset(total=sum(len(a.selected or {}) for a in archives))
    return download_archives(job, archives, match_selected, None)
