"""The shard and manifest contract shared by download, caption and encode.

A shard is a webdataset tar in S3. It is built in a local temporary file and uploaded with one
PUT only when complete (S3 PUTs are atomic), then a small per-shard record is written under
`<prefix>/_done/`. The manifest (`<prefix>/manifest.json`) is rebuilt from those records, so a
worker killed in the middle of a shard leaves no record, the shard is absent from the manifest,
and a rerun rebuilds it under the same name: no duplicates, nothing half-written consumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from infra import s3

MANIFEST = "manifest.json"
DONE = "_done"


@dataclass(frozen=True)
class ShardRecord:
    """One complete shard: where it is, how many samples, its size and checksum."""

    name: str
    uri: str
    samples: int
    bytes: int
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A dataset's complete shards; the unit DVC versions and the next step consumes."""

    dataset: str
    prefix: str
    shards: tuple[ShardRecord, ...]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "prefix": self.prefix,
            "samples": self.samples,
            "bytes": sum(s.bytes for s in self.shards),
            "shards": [asdict(s) for s in self.shards],
            "stats": self.stats,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Manifest":
        return Manifest(
            dataset=data["dataset"],
            prefix=data["prefix"],
            shards=tuple(ShardRecord(**s) for s in data["shards"]),
            stats=data.get("stats", {}),
        )


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (hashlib reads it in blocks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def done_records(prefix: str) -> dict[str, ShardRecord]:
    """Shard records committed under a prefix, by shard name."""
    out = {}
    for uri in s3.list_uris(s3.join(prefix, DONE) + "/"):
        rec = ShardRecord(**s3.get_json(uri))
        out[rec.name] = rec
    return out


def commit_shard(local_tar: Path, prefix: str, name: str, samples: int,
                 meta: dict[str, Any] | None = None) -> ShardRecord:
    """Upload a finished local tar as `<prefix>/<name>.tar` and record it as complete."""
    uri = s3.join(prefix, f"{name}.tar")
    s3.upload_file(local_tar, uri)
    rec = ShardRecord(name=name, uri=uri, samples=samples, bytes=local_tar.stat().st_size,
                      sha256=file_digest(local_tar), meta=meta or {})
    # The record is written after the data: its presence is the commit.
    s3.put_json(s3.join(prefix, DONE, f"{name}.json"), asdict(rec))
    return rec


def write_manifest(dataset: str, prefix: str, stats: dict[str, Any] | None = None,
                   names: Iterable[str] | None = None) -> Manifest:
    """Rebuild `<prefix>/manifest.json` from the committed shard records.

    `names` keeps only those shards (the ones the current params name; older keyed shards
    stay in S3, out of the manifest). manifest.json is the dataset's pointer, like a branch;
    an immutable copy is also written under `manifests/<shards digest>.json`, which is what
    step summaries (and so DVC) record."""
    records = done_records(prefix)
    wanted = sorted(records) if names is None else sorted(set(names) & set(records))
    manifest = Manifest(dataset=dataset, prefix=prefix,
                        shards=tuple(records[k] for k in wanted), stats=stats or {})
    s3.put_json(s3.join(prefix, MANIFEST), manifest.to_json())
    s3.put_json(versioned_uri(manifest), manifest.to_json())
    return manifest


def shards_digest(manifest: Manifest) -> str:
    """sha256 over the shards' names and contents: changes exactly when the data does."""
    blob = "\n".join(f"{s.name} {s.sha256}" for s in manifest.shards)
    return hashlib.sha256(blob.encode()).hexdigest()


def versioned_uri(manifest: Manifest) -> str:
    return s3.join(manifest.prefix, "manifests", f"{shards_digest(manifest)[:16]}.json")


def read_manifest(prefix_or_uri: str) -> Manifest | None:
    uri = prefix_or_uri if prefix_or_uri.endswith(".json") else s3.join(prefix_or_uri, MANIFEST)
    if not s3.exists(uri):
        return None
    return Manifest.from_json(s3.get_json(uri))


class LocalShard:
    """Builds one webdataset tar in a temporary file; samples are dicts of extension -> bytes.

    Use as a context manager; on an exception the temporary file is removed and nothing is
    uploaded.
    """

    def __init__(self, tmp_dir: Path | None = None) -> None:
        self._file = tempfile.NamedTemporaryFile(suffix=".tar", dir=tmp_dir, delete=False)
        self.path = Path(self._file.name)
        self._tar = tarfile.open(fileobj=self._file, mode="w")
        self.samples = 0
        self._keys: set[str] = set()

    def write(self, key: str, sample: dict[str, bytes | str | dict]) -> None:
        if "." in key or "/" in key:
            # webdataset splits the member name at the first dot: a dotted key would corrupt it.
            raise ValueError(f"sample key must not contain '.' or '/': {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key in shard: {key!r}")
        self._keys.add(key)
        for ext, value in sorted(sample.items()):
            data = _encode_field(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # deterministic bytes: reruns give the same sha256
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()
        self._file.close()

    def __enter__(self) -> "LocalShard":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is not None:
            self.path.unlink(missing_ok=True)


def _encode_field(value: bytes | str | dict) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, sort_keys=True).encode("utf-8")


def iter_tar_samples(fileobj, errors: list[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group tar members by key ('key.ext'); a corrupt member ends the shard and is reported."""
    current_key, current = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                data = tar.extractfile(member).read()
                if key != current_key and current_key is not None:
                    yield current_key, current
                    current = {}
                current_key = key
                current[ext] = data
    except (tarfile.TarError, OSError, EOFError) as err:
        if errors is None:
            raise
        errors.append(f"corrupt tar after key {current_key!r}: {err}")
        return  # the partial sample at the break is dropped, never yielded half-read
    if current_key is not None:
        yield current_key, current


def scan_ustar(data: bytes) -> list[tuple[str, int, int]] | None:
    """(name, offset, size) of every member of a plain, intact ustar archive; None otherwise.

    Our shards are plain ustar (short ASCII names, regular files). Reading their headers
    directly is several times faster than tarfile, which matters to the training loader; any
    other layout, a bad checksum or a truncation returns None and tarfile takes over.
    """
    members, pos, end = [], 0, len(data)
    while pos + 512 <= end:
        header = data[pos:pos + 512]
        if header.count(0) == 512:
            return members  # end-of-archive block
        if header[257:262] != b"ustar" or header[156] not in (0x30, 0):
            return None  # pax/GNU extensions, links, directories: not the fast path
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            checksum = int(header[148:156].strip(b"\0 "), 8)
        except ValueError:
            return None
        if sum(header[:148]) + 8 * 32 + sum(header[156:]) != checksum:
            return None
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        start = pos + 512
        if start + size > end:
            return None
        members.append(((prefix + b"/" + name if prefix else name).decode("utf-8", "replace"),
                        start, size))
        pos = start + (size + 511) // 512 * 512
    return None  # no end-of-archive block: truncated


def iter_tar_bytes(data: bytes, errors: list[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """iter_tar_samples over an archive in memory, through scan_ustar when it applies."""
    members = scan_ustar(data)
    if members is None:
        yield from iter_tar_samples(io.BytesIO(data), errors)
        return
    current_key, current = None, {}
    for name, start, size in members:
        key, _, ext = name.rpartition("/")[2].partition(".")
        if key != current_key and current_key is not None:
            yield current_key, current
            current = {}
        current_key = key
        current[ext] = data[start:start + size]
    if current_key is not None:
        yield current_key, current


def iter_shard(uri: str, errors: list[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream the samples of one S3 shard."""
    yield from iter_tar_bytes(s3.get_bytes(uri), errors)
