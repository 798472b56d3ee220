"""Caption step parameters (placeholder: the caption issue fills this in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CaptionParams:
    enabled: bool = True
