"""CC3M: the official caption<TAB>url file (no header), images fetched by img2dataset.

img2dataset runs once per shard into a temporary folder, storing the bytes as served; its
per-sample status and error message become our failure reasons, and the images go through the
same filter and shard contract as every other dataset, keyed `cc3m-<row>`.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.shards import iter_tar_samples
from tasks.download.config import CC3MParams
from tasks.download.core import Item, Job, Result, ordered_map, sample_key, to_result, \
    valid_caption
from tasks.common.fetch import reason_from_message
from tasks.download.drivers import download_rows, take

DATASET = "cc3m"
KEY_COLUMN = "source_key"  # our stable key, carried through img2dataset as an extra column


def parse_tsv(data: bytes) -> list[Item]:
    """One item per non-empty line; the row number (0-based) is the stable source id."""
    items = []
    for row, raw in enumerate(data.split(b"\n")):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        key = sample_key(DATASET, str(row))
        caption_b, sep, url_b = line.partition(b"\t")
        url = url_b.decode("utf-8", "replace").strip()
        if not sep or not url:
            items.append(Item(key, str(row), "", url, skip="malformed_row"))
            continue
        try:
            caption = caption_b.decode("utf-8").strip()
        except UnicodeDecodeError:
            items.append(Item(key, str(row), "", url, skip="caption_not_utf8"))
            continue
        items.append(Item(key, str(row), caption, url, skip=valid_caption(caption, True),
                          extra={"row": row}))
    return items


def run_img2dataset(items: list[Item], out: Path, source: CC3MParams, threads: int,
                    timeout_s: float, retries: int) -> dict[str, bytes | str]:
    """Fetch items with img2dataset; returns key -> image bytes, or key -> failure reason."""
    from img2dataset import download

    table = pa.table({"url": [i.url for i in items], "caption": [i.caption for i in items],
                      KEY_COLUMN: [i.key for i in items]})
    pq.write_table(table, out / "input.parquet")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    download(url_list=str(out / "input.parquet"), input_format="parquet", url_col="url",
             caption_col="caption", save_additional_columns=[KEY_COLUMN],
             output_folder=str(out / "shards"), output_format="webdataset",
             processes_count=source.processes, thread_count=threads,
             number_sample_per_shard=math.ceil(len(items) / source.processes),
             resize_mode="no", disable_all_reencoding=True, compute_hash=None,
             extract_exif=False, timeout=math.ceil(timeout_s), retries=retries,
             enable_wandb=False)
    outcome: dict[str, bytes | str] = {}
    images: dict[str, bytes] = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with open(tar, "rb") as fh:
            images.update((key, files["jpg"]) for key, files in iter_tar_samples(fh)
                          if "jpg" in files)
    for part in sorted((out / "shards").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            if row["status"] == "success" and row["key"] in images:
                outcome[row[KEY_COLUMN]] = images[row["key"]]
            else:
                outcome[row[KEY_COLUMN]] = reason_from_message(row["error_message"] or "")
    return outcome


def img2dataset_results(job: Job, items: list[Item]) -> Iterator[Result]:
    """One shard's results in item order; rows img2dataset never reported count as `other`."""
    todo = [i for i in items if not i.skip]
    outcome: dict[str, bytes | str] = {}
    if todo:
        with tempfile.TemporaryDirectory(dir=job.scratch) as tmp:
            outcome = run_img2dataset(todo, Path(tmp), job.params.cc3m, job.params.threads,
                                      job.params.timeout_s, job.params.http_retries)

    def one(item: Item) -> Result:
        got = item.skip or outcome.get(item.key, "other")
        if isinstance(got, str):
            return Result(item.key, None, got)
        return to_result(item, got, job.params, DATASET)

    return ordered_map(one, items, job.params.threads)


def download(job: Job, source: CC3MParams) -> dict[str, Any]:
    items = take(parse_tsv(job.transfer.read_bytes(source.tsv)),
                 source.fraction, source.max_samples)
    return download_rows(job, items, img2dataset_results)
