"""Classifier-free guidance in the Heun sampler: D = D_u + g (D_c - D_u), checked exactly.

The stub denoiser returns known constants: D_c[b] for a sample whose caption is non-zero and D_u
for an all-zero caption (the unconditional pass). With a denoiser that does not depend on x or
sigma, dx/dsigma = (x - D) / sigma is linear and every Euler and Heun step is exact, so the
sampler lands on the guided value itself: x(0) = D_u + g (D_c - D_u).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.edm import edm_heun_sampler, sample_noise
from model.microdit import DiTOutput

COND = torch.tensor([1.0, -2.0])  # D_c per sample
UNCOND = 0.25  # D_u
SHAPE = (2, 4, 8, 8)  # (B, C, H, W)


class KnownDenoiser(nn.Module):
    """D(x; sigma, text): COND[b] where the caption of sample b is non-zero, UNCOND where it is
    all zero; records every caption batch it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> DiTOutput:
        self.calls.append(text)
        conditional = text.flatten(1).abs().sum(1) > 0  # (B,)
        per_sample = torch.where(conditional, COND.repeat(x.shape[0] // 2), UNCOND)  # (B,)
        return DiTOutput(per_sample.view(-1, 1, 1, 1).expand(x.shape).to(x.dtype), None)


def captions() -> torch.Tensor:
    return torch.ones(2, 7, 16)  # (B, L, caption_dim), non-zero


@pytest.mark.parametrize("guidance", [5.0, 2.5])
def test_guided_sample_is_uncond_plus_g_times_cond_minus_uncond(guidance: float) -> None:
    denoiser = KnownDenoiser()
    out = edm_heun_sampler(denoiser, sample_noise(SHAPE, seed=0), captions(), num_steps=4,
                           guidance=guidance)
    expected = UNCOND + guidance * (COND - UNCOND)  # g 5: [4.0, -11.0]; g 2.5: [2.125, -5.375]
    torch.testing.assert_close(out, expected.view(-1, 1, 1, 1).expand(SHAPE), atol=1e-5,
                               rtol=0)
    # Each call ran the conditional half on the captions and the unconditional half on zeros.
    assert all(torch.equal(t[:2], captions()) and not t[2:].any() for t in denoiser.calls)


def test_guidance_one_is_the_conditional_denoiser_alone() -> None:
    denoiser = KnownDenoiser()
    out = edm_heun_sampler(denoiser, sample_noise(SHAPE, seed=0), captions(), num_steps=4,
                           guidance=1.0)
    torch.testing.assert_close(out, COND.view(-1, 1, 1, 1).expand(SHAPE), atol=1e-5, rtol=0)
    assert all(len(t) == 2 and t.any() for t in denoiser.calls)  # one conditional pass
