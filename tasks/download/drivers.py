"""The two ways a source delivers images: one URL per image, or archives of many images.

Shard boundaries depend only on the source: a URL list is cut every `shard_size` items, an
archive every `shard_size` selected members in archive order. A rerun therefore rebuilds an
unfinished shard with the same samples under the same name, and skips committed ones.
"""

from __future__ import annotations

import itertools
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Literal

from tasks.common.fetch import AccessDenied, FetchError
from tasks.common.shards import iter_tar_samples
from tasks.download.core import Item, Job, Result, ordered_map, to_result

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def take(items: list, fraction: float, max_samples: int | None) -> list:
    """The leading share of a source (the reference's subsets are prefixes), then the cap."""
    head = items[:math.ceil(len(items) * fraction)]
    return head if max_samples is None else head[:max_samples]


def is_permanent(reason: str) -> bool:
    """Client errors do not heal on retry (expired SA-1B links); everything else may."""
    return reason == "not_found" or (reason.startswith("http_4") and reason != "http_429")


# --- one URL per image -----------------------------------------------------------------------


def fetch_results(job: Job, items: list[Item]) -> Iterator[Result]:
    """Fetch, filter and re-encode a shard's items on the job's thread pool, in order."""
    p = job.params

    def one(item: Item) -> Result:
        if item.skip:
            return Result(item.key, None, item.skip)
        try:
            data = job.transfer.fetch_image(item.url)
        except FetchError as err:
            return Result(item.key, None, err.reason)
        return to_result(item, data, p, job.dataset)

    return ordered_map(one, items, p.threads)


def download_rows(job: Job, items: list[Item],
                  fetch: Callable[[Job, list[Item]], Iterator[Result]] = fetch_results
                  ) -> dict[str, Any]:
    """Shard `items` every shard_size; build and commit each shard not yet committed."""
    size = job.params.source(job.dataset).shard_size
    count = math.ceil(len(items) / size)
    job.bar.reset(total=len(items))
    for index in range(count):
        name = f"{index:06d}"
        chunk = items[index * size:(index + 1) * size]
        if name in job.done:
            job.skip(name, len(chunk))
        else:
            job.write(name, fetch(job, chunk))
    return {"shards_planned": count, "complete": True}


# --- archives --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """One upstream archive; `selected` maps member stems to items when metadata lists them."""

    name: str
    url: str
    kind: Literal["tar", "zip"]
    selected: dict[str, Item] | None = None


@dataclass(frozen=True)
class Entry:
    """One selected archive member: its item and image bytes, or the reason it has none."""

    item: Item
    data: bytes | None
    reason: str | None = None


# A reader's view of one member group (same stem): its Entry, or None when not selected.
Matcher = Callable[[Archive, str, dict[str, bytes]], Entry | None]


def image_bytes(files: dict[str, bytes]) -> bytes | None:
    return next((files[ext] for ext in IMAGE_EXTS if ext in files), None)


def match_selected(archive: Archive, stem: str, files: dict[str, bytes]) -> Entry | None:
    """Members named in the metadata; unlisted members (sidecar json files) are ignored."""
    item = (archive.selected or {}).get(stem)
    if item is None:
        return None
    if item.skip:
        return Entry(item, None, item.skip)
    data = image_bytes(files)
    return Entry(item, data, None if data is not None else "corrupt_archive_member")


def _zip_groups(path: Path, errors: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Members of a zip one by one; a member that fails its CRC yields no bytes and is counted."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        errors.append(f"not a zip archive: {err}")
        return
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            stem, _, ext = PurePosixPath(info.filename).name.partition(".")
            try:
                yield stem, {ext.lower(): archive.read(info)}
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                errors.append(f"{info.filename}: {err}")
                yield stem, {}


def _groups(archive: Archive, path: Path, errors: list[str]
            ) -> Iterator[tuple[str, dict[str, bytes]]]:
    if archive.kind == "zip":
        yield from _zip_groups(path, errors)
        return
    with open(path, "rb") as fh:
        yield from iter_tar_samples(fh, errors)


def archive_entries(archive: Archive, path: Path, match: Matcher, limit: int | None
                    ) -> Iterator[Entry]:
    """Selected members in archive order, then the selected items the archive did not hold."""
    errors: list[str] = []
    seen: set[str] = set()
    count = 0
    for stem, files in _groups(archive, path, errors):
        if limit is not None and count >= limit:
            return
        entry = match(archive, stem, files)
        if entry is None or entry.item.key in seen:
            continue
        seen.add(entry.item.key)
        count += 1
        yield entry
    broken = "truncated_archive" if errors else "missing_in_archive"
    if archive.selected is not None:
        for item in archive.selected.values():
            if item.key not in seen:
                yield Entry(item, None, broken)
    elif errors:
        # Without metadata the members lost after the break are unknown: count the break once.
        yield Entry(Item(f"{archive.name}-truncated", archive.name, "", archive.url), None, broken)


def _entry_result(job: Job, entry: Entry) -> Result:
    if entry.data is None:
        return Result(entry.item.key, None, entry.reason)
    return to_result(entry.item, entry.data, job.params, job.dataset)


def download_archive(job: Job, archive: Archive, match: Matcher, limit: int | None) -> int:
    """Shard one archive; returns how many source items it contributed (for max_samples).

    A finished shard is committed only once the next one starts or the archive ends, so that
    the last shard of an archive can be marked final: a rerun skips a final archive without
    fetching it again.
    """
    names = sorted(n for n in job.done if n.startswith(f"{archive.name}-"))
    if any(job.done[n].meta.get("final") for n in names):
        for name in names:
            job.skip(name, job.done[name].meta["stats"]["attempted"])
        return sum(job.done[n].meta["stats"]["attempted"] for n in names)
    size = job.params.source(job.dataset).shard_size
    path = job.transfer.fetch_archive(archive.url, job.scratch / f"{archive.name}.{archive.kind}")
    entries = archive_entries(archive, path, match, limit)
    pending = None
    used = 0
    for chunk, group in itertools.groupby(enumerate(entries), key=lambda t: t[0] // size):
        if pending:
            job.commit(*pending, final=False)
            pending = None
        name = f"{archive.name}-{chunk:04d}"
        if name in job.done:
            skipped = sum(1 for _ in group)
            used += skipped
            job.skip(name, skipped)
            continue
        counted = (e for _, e in group)
        built = job.build(ordered_map(lambda e: _entry_result(job, e), counted,
                                      job.params.threads))
        used += built.stats["attempted"]
        pending = (name, built)
    if pending:
        job.commit(*pending, final=True)
    if path.is_relative_to(job.scratch):
        # Its shards are in S3: the staged copy goes. A failure above keeps it for the rerun.
        path.unlink(missing_ok=True)
    return used


def download_archives(job: Job, archives: Iterable[Archive], match: Matcher,
                      max_samples: int | None) -> dict[str, Any]:
    """Every archive in order until max_samples source items; unreachable archives are listed.

    `archives` may be a generator (a plan streamed from its metadata): it is read once."""
    failed: dict[str, str] = {}
    used = count = 0
    for archive in archives:
        count += 1
        left = None if max_samples is None else max_samples - used
        if left is not None and left <= 0:
            continue  # counted, not fetched
        try:
            used += download_archive(job, archive, match, left)
        except AccessDenied:
            raise  # a token or the terms are missing: every archive would fail the same way
        except FetchError as err:
            if not is_permanent(err.reason):
                raise
            failed[archive.name] = err.reason
    return {"archives": count, "archives_failed": failed, "complete": not failed}
