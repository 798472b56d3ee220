"""Download step parameters (placeholder: the download issue fills this in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DownloadParams:
    datasets: dict[str, dict] = field(default_factory=dict)
