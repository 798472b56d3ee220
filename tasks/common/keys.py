"""Content keys: a short hash of the params and inputs that determine an output.

Every step names its outputs by such a key (caption sidecars, latent shards, checkpoint
folders), so a changed param or input gives a new name: the rerun redoes exactly what changed
and what depends on it, an object is never overwritten with different content, and an
unchanged rerun finds everything in place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from infra.config import to_dict


def digest(value: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `value` (dataclasses as their fields), hex-truncated."""
    if not isinstance(value, (dict, list, tuple, str, int, float, bool, type(None))):
        value = to_dict(value)
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def without(section: Any, *names: str) -> dict[str, Any]:
    """A config section's fields minus those that change how, not what, is computed."""
    return {k: v for k, v in to_dict(section).items() if k not in names}


HASHED_BYTES = 64 * 2**20  # model files up to this size are hashed; larger ones by size + mtime


def model_fingerprint(name: str) -> str:
    """What a model reference points at: a hub id as itself; a local folder by its files, so a
    model rebuilt in place (the demo's trained VAE, a re-imported checkpoint) changes the key."""
    from infra.settings import REPO_ROOT

    folder = Path(name) if Path(name).is_absolute() else REPO_ROOT / name
    if not folder.is_dir():
        return name
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}".encode())
        if stat.st_size <= HASHED_BYTES:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return f"{name}@{digest.hexdigest()[:16]}"
