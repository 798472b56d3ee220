"""The analytic FLOP count agrees with torch's own counter on a real forward pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.config import MicroDiTConfig, preset
from model.flops import forward_flops
from model.microdit import build_model
from tests.model.helpers import batch


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("same_width_mixer", [False, True])
def test_matches_torch_flop_counter(tiny_config: MicroDiTConfig, mask_ratio: float,
                                    same_width_mixer: bool) -> None:
    config = replace(tiny_config, mixer_dim=tiny_config.dim) if same_width_mixer else tiny_config
    model = build_model(config)
    latents, text = batch(config, size=2, caption_len=11)
    counter = FlopCounterMode(display=False)
    # The math backend runs attention as visible matmuls; the CPU fused kernel has no counter.
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(latents, torch.zeros(2), text, mask_ratio)
    assert counter.get_total_flops() == 2 * forward_flops(config, mask_ratio, caption_len=11)


def test_masking_cuts_most_of_the_backbone_cost() -> None:
    config = preset("XL_2")
    ratio = forward_flops(config, 0.75) / forward_flops(config, 0.0)
    assert 0.25 < ratio < 0.45  # the mixer and the caption path still see everything
