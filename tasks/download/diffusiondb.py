"""DiffusionDB 2M: metadata.parquet (image_name, prompt, part_id, image_nsfw, prompt_nsfw) and
the part zips images/part-NNNNNN.zip; caption = prompt; rows with an NSFW score above nsfw_max
are dropped (counted as `nsfw`).

`fraction` takes the leading share of the parts, `max_samples` caps the rows across them.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.download.config import DiffusionDBParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, match_selected, take
from tasks.download.fetch import read_bytes, resolve

DATASET = "diffusiondb"
COLUMNS = ["image_name", "prompt", "part_id", "image_nsfw", "prompt_nsfw"]


def part_name(part_id: int) -> str:
    return f"part-{part_id:06d}"


def plan(data: bytes, source: DiffusionDBParams, parts_url: str) -> list[Archive]:
    table = pq.read_table(io.BytesIO(data), columns=COLUMNS)
    parts = take(sorted(pc.unique(table["part_id"]).to_pylist()), source.fraction, None)
    # Filter before converting to Python objects: the full table has 2M rows.
    wanted = pa.array(parts, type=table["part_id"].type)
    rows = table.filter(pc.is_in(table["part_id"], value_set=wanted)).to_pylist()
    rows.sort(key=lambda r: r["part_id"])  # stable: file order within a part
    rows = take(rows, 1.0, source.max_samples)
    out = []
    for part in parts:
        selected = {}
        for row in (r for r in rows if r["part_id"] == part):
            stem = PurePosixPath(row["image_name"]).name.partition(".")[0]
            nsfw = max(row["image_nsfw"] or 0.0, row["prompt_nsfw"] or 0.0) > source.nsfw_max
            prompt = row["prompt"] or ""
            selected.setdefault(stem, Item(
                sample_key(DATASET, stem), row["image_name"], prompt.strip(),
                f"{parts_url}/{part_name(part)}.zip",
                skip="nsfw" if nsfw else valid_caption(prompt, required=True),
                extra={"part_id": part, "image_nsfw": row["image_nsfw"],
                       "prompt_nsfw": row["prompt_nsfw"]}))
        if selected:
            out.append(Archive(part_name(part), f"{parts_url}/{part_name(part)}.zip", "zip",
                               selected))
    return out


def download(job: Job, source: DiffusionDBParams) -> dict[str, Any]:
    archives = plan(read_bytes(source.metadata, job.params.timeout_s), source,
                    resolve(source.parts).rstrip("/"))
    job.bar.reset(total=sum(len(a.selected or {}) for a in archives))
    return download_archives(job, archives, match_selected, None)
