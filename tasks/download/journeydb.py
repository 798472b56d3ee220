"""JourneyDB in its Hugging Face layout: the annotation jsonl (usually as .jsonl.tgz) whose
`img_path` ("./000/<id>.jpg") names the image archive data/train/imgs/000.tgz; caption = prompt.

`fraction` takes the leading share of the archives, `max_samples` caps the images across them.
The annotations are staged in the scratch folder and streamed: one pass counts items per archive
(counters and the line numbers of repeated images only), then one pass per window of at most
WINDOW_ITEMS items builds that window's archives, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from tasks.download.config import JourneyDBParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, match_selected, take
from tasks.download.fetch import resolve

DATASET = "journeydb"


WINDOW_ITEMS = 1_000_000  # items held in memory at once while the plan streams


def jsonl_lines(path: Path) -> Iterator[str]:
    """The annotation lines, streamed from the file itself or from the first .jsonl member of a
    (gzipped) tar, never read whole: the real file holds millions of records."""
    with open(path, "rb") as raw:
        head = raw.read(262)
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":
        with tarfile.open(path, mode="r|*") as tar:  # stream mode: one pass, no seeking
            for member in tar:
                if member.isfile() and member.name.endswith(".jsonl"):
                    for raw in tar.extractfile(member):  # binary lines: no seeking needed
                        yield raw.decode("utf-8")
                    return
        raise ValueError("JourneyDB annotation archive holds no .jsonl file")
    with open(path, encoding="utf-8") as text:
        yield from text


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(jsonl_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["img_path"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"JourneyDB annotations line {number}: not a record with "
                             f"img_path: {err}") from err
        yield number, record


def _where(img_path: str) -> tuple[str, str]:
    path = PurePosixPath(img_path.removeprefix("./"))
    return path.parent.name, path.name.partition(".")[0]


def first_pass(path: Path) -> tuple[dict[str, int], set[int]]:
    """Items per archive and the line numbers of repeated images (their first entry counts);
    only counters, image ids and line numbers are kept, not the records."""
    counts: dict[str, int] = {}
    seen: set[str] = set()  # image ids (sample keys are by id): ~70 bytes each
    repeats: set[int] = set()
    for number, record in records(path):
        archive, stem = _where(record["img_path"])
        if stem in seen:
            repeats.add(number)
            continue
        seen.add(stem)
        counts[archive] = counts.get(archive, 0) + 1
    return counts, repeats


def selected_archives(counts: dict[str, int], fraction: float, max_samples: int | None
                      ) -> dict[str, int]:
    """The leading share of the archives (by name), cut at max_samples items in that order."""
    names = take(sorted(counts), fraction, None)
    out: dict[str, int] = {}
    left = max_samples
    for name in names:
        if left is not None and left <= 0:
            break
        n = counts[name] if left is None else min(counts[name], left)
        out[name] = n
        left = None if left is None else left - n
    return out


def windows(selected: dict[str, int], limit: int = WINDOW_ITEMS) -> Iterator[list[str]]:
    """Consecutive archives whose items fit in one window of memory."""
    group: list[str] = []
    size = 0
    for name, n in selected.items():
        if group and size + n > limit:
            yield group
            group, size = [], 0
        group.append(name)
        size += n
    if group:
        yield group


def plan(path: Path, images_url: str, fraction: float, max_samples: int | None,
         counts: dict[str, int] | None = None, repeats: set[int] | None = None,
         limit: int = WINDOW_ITEMS) -> Iterator[Archive]:
    """The archives to fetch, in name order, built window by window as the file streams past:
    one pass to count, then one pass per window of at most `limit` items."""
    if counts is None or repeats is None:
        counts, repeats = first_pass(path)
    selected = selected_archives(counts, fraction, max_samples)
    for group in windows(selected, limit):
        wanted = set(group)
        items: dict[str, list[Item]] = {name: [] for name in group}
        for number, record in records(path):
            archive, stem = _where(record["img_path"])
            if archive not in wanted or number in repeats \
                    or len(items[archive]) >= selected[archive]:
                continue
            prompt = str(record.get("prompt") or "")
            items[archive].append(Item(
                sample_key(DATASET, stem), record["img_path"], prompt.strip(),
                f"{images_url}/{archive}.tgz", skip=valid_caption(prompt, required=True),
                extra={"img_path": record["img_path"], "archive": archive}))
        for name in group:
            if items[name]:
                stems = {_where(i.extra["img_path"])[1]: i for i in items.pop(name)}
                yield Archive(name, f"{images_url}/{name}.tgz", "tar", stems)


def download(job: Job, source: JourneyDBParams) -> dict[str, Any]:
    name = PurePosixPath(resolve(source.annotations)).name or "annotations.jsonl"
    path: Path = job.transfer.fetch_archive(source.annotations, job.scratch / name)
    counts, repeats = first_pass(path)
    selected = selected_archives(counts, source.fraction, source.max_samples)
    job.bar.reset(total=sum(selected.values()))
    archives = plan(path, resolve(source.images).rstrip("/"), source.fraction,
                    source.max_samples, counts, repeats)
    outcome = download_archives(job, archives, match_selected, None)
    if path.is_relative_to(job.scratch):
        path.unlink(missing_ok=True)  # kept after a failure: the rerun plans from it again
    return outcome
