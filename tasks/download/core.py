"""What every dataset reader shares: source items, per-sample results and shard writing.

A reader turns a dataset's upstream format into `Item`s (one per source image, with a stable key);
a driver fetches their images and passes `Result`s to a `Job`, which writes them into shards
through the common shard contract, counts outcomes by reason and skips shards already committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from infra.config import to_dict
from infra.retry import RetryPolicy
from tasks.common.fetch import Transfer
from tasks.common.shards import LocalShard, ShardRecord, commit_shard
from tasks.download.config import DownloadParams, SourceParams
from tasks.download.images import ImageRejected, prepare_image

# Test-only: seconds to sleep after each sample is written, which widens the window in which the
# kill test can stop a worker in the middle of a shard. Unset in normal runs.
SAMPLE_DELAY_ENV = "MB_DOWNLOAD_TEST_SAMPLE_DELAY_S"
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Item:
    """One source image before it is fetched; `skip` is a reason decided from metadata alone."""

    key: str
    source_id: str
    caption: str
    url: str
    skip: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """One item's outcome: a webdataset sample, or the reason it was dropped."""

    key: str
    sample: dict[str, bytes | str | dict] | None
    reason: str | None


def sample_key(dataset: str, source_id: str) -> str:
    """Stable key `<dataset>-<source id>`; dots and slashes would break webdataset grouping."""
    return f"{dataset}-{re.sub(r'[^A-Za-z0-9_-]', '_', source_id)}"


def valid_caption(text: str, required: bool) -> str | None:
    """The skip reason for a caption, or None when it can be stored as UTF-8 text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "caption_not_utf8"
    if required and not text.strip():
        return "empty_caption"
    return None


def to_result(item: Item, data: bytes, params: DownloadParams, dataset: str) -> Result:
    """Filter and re-encode the fetched image and attach caption and metadata."""
    try:
        image = prepare_image(data, params.image)
    except ImageRejected as err:
        return Result(item.key, None, err.reason)
    meta = {"dataset": dataset, "source_id": item.source_id, "url": item.url,
            "caption": item.caption, "width": image.width, "height": image.height,
            "original_width": image.original_width, "original_height": image.original_height,
            **(item.extra or {})}
    return Result(item.key, {"jpg": image.jpg, "txt": item.caption, "json": meta}, None)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn over items on a thread pool, in input order, with at most 2 x threads in flight.

    Executor.map would submit the whole input at once; archive streams must stay bounded.
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


# Source fields added after plans were first written, at their default value: left out of the
# fingerprint, so shards committed before the field existed keep their plan.
LATER_DEFAULTS = {"variant": "2m", "images": "", "val_annotations": ""}


def plan_id(dataset: str, source: SourceParams, params: DownloadParams) -> str:
    """Fingerprint of everything that decides which samples land in which shard."""
    selection = {k: v for k, v in to_dict(source).items() if k not in ("enabled", "processes")
                 and not (k in LATER_DEFAULTS and LATER_DEFAULTS[k] == v)}
    blob = json.dumps({"dataset": dataset, "source": selection, "image": to_dict(params.image)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def transfer_for(params: DownloadParams) -> Transfer:
    """The network settings of one dataset's download, with fresh counters."""
    policy = RetryPolicy(params.archive_retries, params.backoff_s, params.backoff_max_s)
    return Transfer(timeout_s=params.timeout_s, image_retries=params.http_retries, policy=policy,
                    token_hosts=tuple(h.lower() for h in params.token_hosts),
                    reserve_bytes=int(params.scratch_reserve_gib * (1 << 30)))


def scratch_root(params: DownloadParams) -> Path:
    """Where archives are staged: download.scratch_dir, relative to the repository, or the
    system temp folder."""
    from infra.settings import REPO_ROOT

    if not params.scratch_dir:
        return Path(tempfile.gettempdir()) / "micro-budget-scratch"
    path = Path(params.scratch_dir).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def empty_stats() -> dict[str, Any]:
    return {"attempted": 0, "succeeded": 0, "failed": {}}


def add_stats(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    failed = Counter(total["failed"])
    failed.update(part["failed"])
    return {"attempted": total["attempted"] + part["attempted"],
            "succeeded": total["succeeded"] + part["succeeded"],
            "failed": dict(sorted(failed.items()))}


@dataclass(frozen=True)
class BuiltShard:
    """A complete local tar, not yet committed."""

    path: Path
    samples: int
    stats: dict[str, Any]


@dataclass
class Job:
    """One dataset's download into `prefix`: builds and commits shards, skips committed ones."""

    dataset: str
    prefix: str
    params: DownloadParams
    plan: str
    done: dict[str, ShardRecord]
    bar: tqdm
    tmp_dir: Path | None = None
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    transfer: Transfer = field(default_factory=Transfer)

    def __post_init__(self) -> None:
        # Shards of other download plans (another selection, sharding or image filter) stay
        # where they are, outside this plan's manifest: this plan's shards have names of their
        # own, so nothing is overwritten and switching back finds the old plan complete.
        self.foreign = sorted(n for n, r in self.done.items() if r.meta.get("plan") != self.plan)
        self.done = {r.meta.get("logical", r.name): r for r in self.done.values()
                     if r.meta.get("plan") == self.plan}

    def shard_name(self, name: str) -> str:
        """The stored name of this plan's shard `name`: keyed by the plan."""
        return f"{name}-p{self.plan[:8]}"

    @property
    def scratch(self) -> Path:
        """This plan's staging folder: archives (resumable parts) and shards being built."""
        root = self.tmp_dir if self.tmp_dir is not None else scratch_root(self.params)
        folder = root / f"{self.dataset}-{self.plan}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def skip(self, name: str, items: int) -> None:
        self.skipped.append(name)
        self.bar.update(items)

    def build(self, results: Iterable[Result]) -> BuiltShard:
        delay = float(os.environ.get(SAMPLE_DELAY_ENV) or 0)
        failed: Counter = Counter()
        attempted = 0
        with LocalShard(self.scratch) as shard:
            for result in results:
                attempted += 1
                if result.sample is not None:
                    shard.write(result.key, result.sample)
                else:
                    failed[result.reason or "other"] += 1
                self.bar.update(1)
                if delay:
                    time.sleep(delay)
        stats = {"attempted": attempted, "succeeded": shard.samples,
                 "failed": dict(sorted(failed.items()))}
        return BuiltShard(shard.path, shard.samples, stats)

    def commit(self, name: str, built: BuiltShard, **meta: Any) -> ShardRecord:
        try:
            record = commit_shard(built.path, self.prefix, self.shard_name(name), built.samples,
                                  meta={"plan": self.plan, "logical": name,
                                        "stats": built.stats, **meta})
        finally:
            built.path.unlink(missing_ok=True)
        self.done[name] = record
        self.written.append(name)
        return record

    def write(self, name: str, results: Iterable[Result], **meta: Any) -> ShardRecord:
        return self.commit(name, self.build(results), **meta)
