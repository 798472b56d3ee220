"""Protocol records and their hashes: what makes two evaluation numbers comparable.

A protocol is a flat JSON-able dict. Its hash keys every cache (real statistics, prompt lists,
generated images), so a change of any recorded value recomputes instead of reusing stale data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tasks.common.shards import Manifest

# How real images are brought to the generation resolution (reference.md, "Evaluation").
REAL_RESIZE = "pil-bicubic-short-side+center-crop"
# How both sets are brought to the Inception input size (tasks/evaluate/inception.py).
FEATURE_RESIZE = "pil-bicubic-float-299"
HASH_CHARS = 16  # hex characters of sha256 kept in cache keys


def protocol_hash(protocol: dict[str, Any]) -> str:
    """Stable short hash of a protocol dict (sorted-key JSON)."""
    text = json.dumps(protocol, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def manifest_id(manifest: Manifest) -> str:
    """Content identity of a dataset: the hash of its shards' checksums, in manifest order."""
    digest = hashlib.sha256()
    for shard in manifest.shards:
        digest.update(f"{shard.name}:{shard.sha256}\n".encode())
    return digest.hexdigest()[:HASH_CHARS]
