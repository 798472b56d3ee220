"""TextCaps: the official annotation JSON (`data`: one entry per caption) and its images.

Entries are grouped by image_id; the first storable caption (by caption_id) is the sample's
text, all captions go to its metadata. Images come from flickr_original_url.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.download.config import TextCapsParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import download_rows, take

DATASET = "textcaps"


def first_caption(captions: list[str]) -> tuple[str, str | None]:
    """The first caption that can be stored, or ("", reason of the first) when none can."""
    reasons = [valid_caption(c, required=True) for c in captions]
    for caption, reason in zip(captions, reasons):
        if reason is None:
            return caption.strip(), None
    return "", reasons[0] if reasons else "empty_caption"


def parse(doc: dict[str, Any]) -> list[Item]:
    by_image: dict[str, list[dict]] = {}
    for entry in doc["data"]:
        by_image.setdefault(str(entry["image_id"]), []).append(entry)
    items = []
    for image_id, entries in by_image.items():
        entries.sort(key=lambda e: e.get("caption_id", 0))
        captions = [e.get("caption_str", "") for e in entries]
        caption, skip = first_caption(captions)
        head = entries[0]
        url = head.get("flickr_original_url") or head.get("flickr_300k_url") or ""
        items.append(Item(sample_key(DATASET, image_id), image_id, caption, url,
                          skip=skip or (None if url else "missing_url"),
                          extra={"captions": captions,
                                 "image_classes": head.get("image_classes", [])}))
    return items


def download(job: Job, source: TextCapsParams) -> dict[str, Any]:
    doc = json.loads(job.transfer.read_bytes(source.annotations))
    return download_rows(job, take(parse(doc), source.fraction, source.max_samples))
