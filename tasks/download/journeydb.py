"""JourneyDB in its Hugging Face layout: the annotation jsonl (usually as .jsonl.tgz) whose
`img_path` ("./000/<id>.jpg") names the image archive data/train/imgs/000.tgz; caption = prompt.

`fraction` takes the leading share of the archives, `max_samples` caps the images across them.
The annotations are staged in the scratch folder and streamed once, each record written to its
archive's file in scratch (a repeated image keeps its first entry); each archive's items are then
built from its own file as the download reaches it, so memory holds the image ids and one
archive, and time is linear in rows.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from tasks.common.fetch import resolve
from tasks.download.config import JourneyDBParams
from tasks.download.core import Item, Job, sample_key, valid_caption
from tasks.download.drivers import Archive, download_archives, match_selected, take

DATASET = "journeydb"


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


def records(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
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


def split(path: Path, folder: Path) -> dict[str, int]:
    """One pass: each record to its archive's file under `folder` (a repeated image keeps its
    first entry); returns items per archive. Held in memory: the image ids and one line."""
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    seen: set[str] = set()  # image ids (sample keys are by id): ~70 bytes each
    files: dict[str, Any] = {}
    try:
        for _, record in records(jsonl_lines(path)):
            archive, stem = _where(record["img_path"])
            if stem in seen:
                continue
            seen.add(stem)
            counts[archive] = counts.get(archive, 0) + 1
            if archive not in files:
                files[archive] = open(folder / f"{archive}.jsonl", "w", encoding="utf-8")
            files[archive].write(json.dumps(record) + "\n")
    finally:
        for handle in files.values():
            handle.close()
    return counts


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


def plan(folder: Path, selected: dict[str, int], images_url: str) -> Iterator[Archive]:
    """The archives to fetch, in name order, each built from its own split file as it is
    reached (so one archive's items are in memory at a time); time is linear in rows."""
    for name, wanted in selected.items():
        items: dict[str, Item] = {}
        with open(folder / f"{name}.jsonl", encoding="utf-8") as lines:
            for _, record in records(lines):
                if len(items) >= wanted:
                    break
                stem = _where(record["img_path"])[1]
                prompt = str(record.get("prompt") or "")
                items[stem] = Item(
                    sample_key(DATASET, stem), record["img_path"], prompt.strip(),
                    f"{images_url}/{name}.tgz", skip=valid_caption(prompt, required=True),
                    extra={"img_path": record["img_path"], "archive": name})
        if items:
            yield Archive(name, f"{images_url}/{name}.tgz", "tar", items)


def download(job: Job, source: JourneyDBParams) -> dict[str, Any]:
    name = PurePosixPath(resolve(source.annotations)).name or "annotations.jsonl"
    path: Path = job.transfer.fetch_archive(source.annotations, job.scratch / name)
    folder = job.scratch / "journeydb-split"
    shutil.rmtree(folder, ignore_errors=True)  # a split left by a crash is redone whole
    selected = selected_archives(split(path, folder), source.fraction, source.max_samples)
    job.bar.reset(total=sum(selected.values()))
    archives = plan(folder, selected, resolve(source.images).rstrip("/"))
    outcome = download_archives(job, archives, match_selected, None)
    shutil.rmtree(folder, ignore_errors=True)
    if path.is_relative_to(job.scratch):
        path.unlink(missing_ok=True)  # kept after a failure: the rerun plans from it again
    return outcome
