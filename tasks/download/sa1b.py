"""SA-1B: the link list (file_name<TAB>cdn_link, with a header) and its tar archives.

Each archive holds sa_<id>.jpg with a sa_<id>.json of masks; only the json's image record is
kept. Captions are empty here: the caption step writes them. `fraction` takes the leading share
of the archives (the reference's 1% subset), `max_samples` caps the images across them.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from tasks.download.config import SA1BParams
from tasks.download.core import Item, Job, sample_key
from tasks.download.drivers import Archive, Entry, download_archives, take

DATASET = "sa1b"


def parse_links(data: bytes) -> list[Archive]:
    archives = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        name, sep, link = line.strip().partition("\t")
        if not line.strip() or (name, link) == ("file_name", "cdn_link"):
            continue
        if not sep or not link:
            raise ValueError(f"SA-1B link list line {number}: expected file_name<TAB>cdn_link, "
                             f"got {line[:80]!r}")
        archives.append(Archive(PurePosixPath(name).name.partition(".")[0], link, "tar"))
    return archives


def match(archive: Archive, stem: str, files: dict[str, bytes]) -> Entry | None:
    """Every jpg is an item; its json sidecar, when readable, adds the image record."""
    if "jpg" not in files:
        return None
    try:
        record = json.loads(files["json"]).get("image", {}) if "json" in files else {}
    except (ValueError, AttributeError):
        record = {}
    item = Item(sample_key(DATASET, stem.removeprefix("sa_")), stem, "", archive.url,
                extra={"archive": archive.name, "sa1b_image": record})
    return Entry(item, files["jpg"])


def download(job: Job, source: SA1BParams) -> dict[str, Any]:
    archives = take(parse_links(job.transfer.read_bytes(source.links)),
                    source.fraction, None)
    return download_archives(job, archives, match, source.max_samples)
