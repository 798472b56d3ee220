"""TextCaps: the official annotation JSONs (`data`: one entry per caption) and their images.

Entries are grouped by image_id over the train and val files; the first storable caption (by
caption_id) is the sample's text, all captions go to its metadata with the split. Images come
from the TextVQA image archive train_val_images.zip, where train and val images both live under
train_images/<image_id>.jpg (docs/sources.md), read as one archive like any other; without it,
from each entry's flickr_original_url, where a redirect to Flickr's "photo unavailable" image
is counted as `placeholder`.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.download.config import TextCapsParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, download_rows, match_selected, \
    take
from tasks.common.fetch import resolve

DATASET = "textcaps"
ARCHIVE = "train_val_images"


def first_caption(captions: list[str]) -> tuple[str, str | None]:
    """The first caption that can be stored, or ("", reason of the first) when none can."""
    reasons = [valid_caption(c, required=True) for c in captions]
    for caption, reason in zip(captions, reasons):
        if reason is None:
            return caption.strip(), None
    return "", reasons[0] if reasons else "empty_caption"


def parse(doc: dict[str, Any], images_url: str = "") -> list[Item]:
    by_image: dict[str, list[dict]] = {}
    for entry in doc["data"]:
        by_image.setdefault(str(entry["image_id"]), []).append(entry)
    items = []
    for image_id, entries in by_image.items():
        entries.sort(key=lambda e: e.get("caption_id", 0))
        captions = [e.get("caption_str", "") for e in entries]
        caption, skip = first_caption(captions)
        head = entries[0]
        url = images_url or head.get("flickr_original_url") or head.get("flickr_300k_url") or ""
        items.append(Item(sample_key(DATASET, image_id), image_id, caption, url,
                          skip=skip or (None if url else "missing_url"),
                          extra={"captions": captions, "split": head.get("set_name", ""),
                                 "image_classes": head.get("image_classes", [])}))
    return items


def download(job: Job, source: TextCapsParams) -> dict[str, Any]:
    images_url = resolve(source.images) if source.images else ""
    items: list[Item] = []
    seen: set[str] = set()
    for location in filter(None, (source.annotations, source.val_annotations)):
        for item in parse(json.loads(job.transfer.read_bytes(location)), images_url):
            if item.key not in seen:  # an image in both splits keeps its first entry
                seen.add(item.key)
                items.append(item)
    items = take(items, source.fraction, source.max_samples)
    if not images_url:
        return download_rows(job, items)
    job.bar.reset(total=len(items))
    archive = Archive(ARCHIVE, images_url, "zip", {item.source_id: item for item in items})
    return download_archives(job, [archive], match_selected, None)
