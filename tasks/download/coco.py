"""COCO-2014 val: captions_val2014.json (alone or inside the annotations zip) and its images.

All captions are kept in the metadata (evaluation picks one); the sample text is the first
caption by annotation id. Images come from each image's coco_url.

Each image is fetched once and stored twice: filtered and re-encoded like every training set in
`raw/coco/`, and byte for byte as served, whatever its size, in `raw/coco-original/` (same
shard names and boundaries), from which evaluate computes the FID reference statistics. A shard
counts as done when both are committed; a rerun rebuilds whichever is missing.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections import Counter
from typing import Any, Iterator

from tasks.common.fetch import FetchError
from tasks.common.shards import LocalShard, done_records, versioned_uri, write_manifest
from tasks.download.config import CocoParams
from tasks.download.core import BuiltShard, Item, Job, Result, ordered_map, sample_key, to_result
from tasks.download.drivers import take
from tasks.download.keys import originals_dataset
from tasks.download.textcaps import first_caption

DATASET = "coco"
ZIP_MEMBER = "annotations/captions_val2014.json"


def load_annotations(data: bytes) -> dict[str, Any]:
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = archive.read(ZIP_MEMBER)
    return json.loads(data)


def parse(doc: dict[str, Any]) -> list[Item]:
    captions: dict[int, list[tuple[int, str]]] = {}
    for ann in doc["annotations"]:
        captions.setdefault(ann["image_id"], []).append((ann["id"], ann["caption"]))
    items = []
    for image in sorted(doc["images"], key=lambda i: i["id"]):
        texts = [text for _, text in sorted(captions.get(image["id"], []))]
        caption, skip = first_caption(texts)
        items.append(Item(sample_key(DATASET, str(image["id"])), str(image["id"]), caption,
                          image["coco_url"], skip=skip,
                          extra={"captions": texts, "file_name": image["file_name"]}))
    return items


def originals_job(job: Job) -> Job:
    """The job that writes the images as fetched, in the sibling prefix raw/coco-original/."""
    name = originals_dataset(DATASET)
    prefix = f"{job.prefix.rstrip('/').rsplit('/', 1)[0]}/{name}"
    return Job(name, prefix, job.params, job.plan, done_records(prefix), job.bar,
               tmp_dir=job.tmp_dir, transfer=job.transfer)


def original_sample(item: Item, data: bytes) -> dict[str, Any]:
    """The served bytes untouched (val2014 files are JPEG), with the image's identity."""
    ext = "png" if data.startswith(b"\x89PNG") else "jpg"
    return {ext: data, "json": {"source_id": item.source_id, "url": item.url,
                                "file_name": (item.extra or {}).get("file_name"),
                                "captions": (item.extra or {}).get("captions", [])}}


def fetch_keeping(job: Job, items: list[Item], kept: LocalShard, failed: Counter
                  ) -> Iterator[Result]:
    """Fetch each image once: its bytes go to `kept` as served, its filtered sample is yielded.

    An image kept out of training by its caption is still a reference image; images that
    could not be fetched are counted in `failed` by reason."""
    def one(item: Item) -> tuple[Item, bytes | None, Result]:
        try:
            data = job.transfer.fetch_image(item.url)
        except FetchError as err:
            return item, None, Result(item.key, None, item.skip or err.reason)
        if item.skip:
            return item, data, Result(item.key, None, item.skip)
        return item, data, to_result(item, data, job.params, job.dataset)

    for item, data, result in ordered_map(one, items, job.params.threads):
        if data is None:
            failed[result.reason or "other"] += 1
        else:
            kept.write(item.key, original_sample(item, data))
        yield result


def download(job: Job, source: CocoParams) -> dict[str, Any]:
    doc = load_annotations(job.transfer.read_bytes(source.annotations))
    items = take(parse(doc), source.fraction, source.max_samples)
    originals = originals_job(job)
    size = source.shard_size
    names = [f"{index:06d}" for index in range(math.ceil(len(items) / size))]
    job.bar.reset(total=len(items))
    for index, name in enumerate(names):
        chunk = items[index * size:(index + 1) * size]
        if name in job.done and name in originals.done:
            job.skip(name, len(chunk))
            continue
        failed: Counter = Counter()
        with LocalShard(originals.scratch) as kept:
            built = job.build(fetch_keeping(job, chunk, kept, failed))
        stats = {"attempted": len(chunk), "succeeded": kept.samples,
                 "failed": dict(sorted(failed.items()))}
        # The originals first: a committed raw shard never lacks its originals on a rerun.
        for target, shard in ((originals, BuiltShard(kept.path, kept.samples, stats)),
                              (job, built)):
            if name in target.done:
                shard.path.unlink(missing_ok=True)
            else:
                target.commit(name, shard)
    manifest = write_manifest(originals.dataset, originals.prefix,
                              names=[originals.done[n].name for n in names if n in originals.done])
    return {"shards_planned": len(names), "complete": True,
            "originals": {"dataset": originals.dataset, "manifest": versioned_uri(manifest),
                          "samples": manifest.samples,
                          "shards_sha256": {s.name: s.sha256 for s in manifest.shards}}}
