"""COCO-2014 val: captions_val2014.json (alone or inside the annotations zip) and its images.

All captions are kept in the metadata (evaluation picks one); the sample text is the first
caption by annotation id. Images come from each image's coco_url.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from tasks.download.config import CocoParams
from tasks.download.core import Item, Job, sample_key
from tasks.download.drivers import download_rows, take
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


def download(job: Job, source: CocoParams) -> dict[str, Any]:
    doc = load_annotations(job.transfer.read_bytes(source.annotations))
    return download_rows(job, take(parse(doc), source.fraction, source.max_samples))
