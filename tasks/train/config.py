"""Train step parameters (placeholder: the train issue fills this in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainParams:
    model: str = "tiny"
