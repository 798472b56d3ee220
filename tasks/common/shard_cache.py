"""A node-local shard cache: each shard is fetched from S3 once per node, whatever the ranks.

The ranks of a node share one folder. A shard is stored under its content digest (the
manifest's sha256), so a file is never stale and two runs reading the same shard share it.
The first rank to want a shard takes its lock, GETs it and writes it (to a temporary name,
then renamed); the others wait on the lock and read the file. Past `max_bytes` the oldest
fetched files are deleted, except those another rank is reading (their lock is held).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from infra import s3


class NodeCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the node shard cache needs max_bytes > 0, got {max_bytes}")
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.gets = 0  # shards this process fetched from S3

    @contextmanager
    def _locked(self, digest: str, blocking: bool = True) -> Iterator[bool]:
        with open(self.root / f"{digest}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, uri: str, digest: str) -> bytes:
        """The shard's bytes: from this node's folder, or from S3 once for the whole node."""
        path = self.root / f"{digest}.tar"
        with self._locked(digest):
            if path.exists():
                return path.read_bytes()
            data = s3.get_bytes(uri)
            self.gets += 1
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self._evict(keep=path)
        return data

    def _evict(self, keep: Path) -> None:
        files = []
        for path in self.root.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another rank meanwhile
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                return
            if path == keep:
                continue
            with self._locked(path.stem, blocking=False) as free:
                if free and path.exists():
                    path.unlink()
                    total -= size
