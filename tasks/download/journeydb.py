"""JourneyDB in its Hugging Face layout: the annotation jsonl (usually as .jsonl.tgz) whose
`img_path` ("./000/<id>.jpg") names the image archive data/train/imgs/000.tgz; caption = prompt.

`fraction` takes the leading share of the archives, `max_samples` caps the images across them.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import PurePosixPath
from typing import Any

from tasks.download.config import JourneyDBParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, match_selected, take
from tasks.download.fetch import resolve

DATASET = "journeydb"


def jsonl_text(data: bytes) -> str:
    """The jsonl itself, or the first .jsonl member of a (gzipped) tar."""
    if data[:2] == b"\x1f\x8b" or tarfile.is_tarfile(io.BytesIO(data)):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            member = next((m for m in tar if m.isfile() and m.name.endswith(".jsonl")), None)
            if member is None:
                raise ValueError("JourneyDB annotation archive holds no .jsonl file")
            data = tar.extractfile(member).read()
    return data.decode("utf-8")


def parse(text: str, images_url: str) -> dict[str, list[Item]]:
    """Items grouped by archive name, in file order; a repeated image keeps its first entry."""
    by_archive: dict[str, list[Item]] = {}
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            img_path = record["img_path"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"JourneyDB annotations line {number}: not a record with "
                             f"img_path: {err}") from err
        path = PurePosixPath(img_path.removeprefix("./"))
        archive, stem = path.parent.name, path.name.partition(".")[0]
        key = sample_key(DATASET, stem)
        if key in seen:
            continue
        seen.add(key)
        prompt = str(record.get("prompt") or "")
        by_archive.setdefault(archive, []).append(Item(
            key, img_path, prompt.strip(), f"{images_url}/{archive}.tgz",
            skip=valid_caption(prompt, required=True),
            extra={"img_path": img_path, "archive": archive}))
    return by_archive


def archives(by_archive: dict[str, list[Item]], fraction: float, max_samples: int | None
             ) -> list[Archive]:
    names = take(sorted(by_archive), fraction, None)
    items = take([i for n in names for i in by_archive[n]], 1.0, max_samples)
    out = []
    for name in names:
        selected = {i.key: i for i in items if i.extra["archive"] == name}
        if selected:
            first = next(iter(selected.values()))
            stems = {PurePosixPath(i.extra["img_path"]).name.partition(".")[0]: i
                     for i in selected.values()}
            out.append(Archive(name, first.url, "tar", stems))
    return out


def download(job: Job, source: JourneyDBParams) -> dict[str, Any]:
    text = jsonl_text(job.transfer.read_bytes(source.annotations))
    plan = archives(parse(text, resolve(source.images).rstrip("/")), source.fraction,
                    source.max_samples)
    job.bar.reset(total=sum(len(a.selected or {}) for a in plan))
    return download_archives(job, plan, match_selected, None)
