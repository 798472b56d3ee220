"""The learning-rate schedule pinned at values worked out by hand, so a wrong rate fails.

Stage: 10 warmup steps, then cosine over the remaining 100 steps to a floor of 0.33 of the peak,
so step 10 + 100 p is at progress p of the decay and the factor there is
0.33 + 0.67 * (1 + cos(pi p)) / 2:
    p = 0.25: (1 + 0.70710678) / 2 = 0.85355339 -> 0.33 + 0.57188077 = 0.90188077
    p = 0.50: (1 + 0) / 2 = 0.5               -> 0.33 + 0.335      = 0.665
    p = 0.75: (1 - 0.70710678) / 2 = 0.14644661 -> 0.33 + 0.09811923 = 0.42811923
    p = 1.00: 0                               -> 0.33
"""

from __future__ import annotations

import pytest

from tasks.train.config import StageParams
from tasks.train.schedule import lr_factor


def stage(schedule: str = "cosine") -> StageParams:
    return StageParams(name="s1", resolution=256, mask_ratio=0.75, steps=110, lr=2.4e-4,
                       schedule=schedule, warmup_steps=10, final_lr_ratio=0.33)


@pytest.mark.parametrize(("step", "factor"), [(0, 0.1), (4, 0.5), (9, 1.0)])
def test_warmup_is_linear_to_the_peak(step: int, factor: float) -> None:
    assert lr_factor(stage(), step) == pytest.approx(factor, abs=1e-9)


@pytest.mark.parametrize(("step", "factor"), [
    (10, 1.0),  # decay starts at the peak
    (35, 0.90188077),  # 25 % of the decay
    (60, 0.665),  # 50 %
    (85, 0.42811923),  # 75 %
    (110, 0.33),  # end of the stage: the floor
    (500, 0.33),  # past the end: stays at the floor
])
def test_cosine_decay_mid_values(step: int, factor: float) -> None:
    assert lr_factor(stage(), step) == pytest.approx(factor, abs=1e-7)


def test_constant_schedule_holds_the_peak_after_warmup() -> None:
    assert [lr_factor(stage("constant"), s) for s in (0, 9, 10, 60, 110)] == pytest.approx(
        [0.1, 1.0, 1.0, 1.0, 1.0], abs=1e-9)
