"""Evaluate step parameters (placeholder: the evaluate issue fills this in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluateParams:
    enabled: bool = True
