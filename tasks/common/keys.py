"""Content keys: a short hash of the params and inputs that determine an output.

Every step names its outputs by such a key (caption sidecars, latent shards, checkpoint
folders), so a changed param or input gives a new name: the rerun redoes exactly what changed
and what depends on it, an object is never overwritten with different content, and an
unchanged rerun finds everything in place.
"""

from __future__ import annotations

import hashlib
import json
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
