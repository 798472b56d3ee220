"""Learning-rate schedules as multipliers of a stage's peak lr (LambdaLR keeps group ratios)."""

from __future__ import annotations

import math

from tasks.train.config import StageParams


def lr_factor(stage: StageParams, step: int) -> float:
    """Linear warmup, then constant or cosine decay to final_lr_ratio at the last step."""
    if stage.warmup_steps and step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    if stage.schedule == "constant":
        return 1.0
    span = max(stage.steps - stage.warmup_steps, 1)
    progress = min(max(step - stage.warmup_steps, 0) / span, 1.0)
    floor = stage.final_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
