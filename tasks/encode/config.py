"""Encode step parameters (placeholder: the encode issue fills this in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncodeParams:
    enabled: bool = True
