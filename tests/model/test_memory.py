"""The preflight's peak-memory estimate against the reference's measured points (reference.md,
"Cost"): 77 GiB (XL_2, 256 px, mask 0.75, micro-batch 256, compiled) is the point it is fitted
to; 49 GiB (micro-batch 128, eager) is the check. Activation checkpointing must cut it."""

from __future__ import annotations

import pytest

from model.config import preset
from model.memory import activation_bytes, parameter_count, peak_gib


def test_estimate_matches_the_reference_measurements():
    cfg = preset("XL_2", input_size=32)
    params = parameter_count(cfg)
    assert 1.1e9 < params < 1.2e9  # the 1.16B sparse model
    assert peak_gib(cfg, 256, 0.75, params=params) == pytest.approx(77.0, rel=0.02)
    assert peak_gib(cfg, 128, 0.75, params=params) == pytest.approx(49.0, rel=0.06)


def test_more_tokens_cost_more_and_checkpointing_costs_less():
    cfg256, cfg512 = preset("XL_2", input_size=32), preset("XL_2", input_size=64)
    masked, unmasked = activation_bytes(cfg256, 0.75), activation_bytes(cfg256, 0.0)
    assert 2.5 < unmasked / masked < 4.0  # the backbone sees 4x the tokens, the mixer the same
    assert activation_bytes(cfg512, 0.0) == pytest.approx(4 * unmasked, rel=0.05)
    assert activation_bytes(cfg512, 0.0, checkpointing=True) < activation_bytes(cfg512, 0.0) / 5
