"""Helpers for the model tests: random weights and random batches for tiny networks."""

from __future__ import annotations

import torch

from model.config import MicroDiTConfig
from model.microdit import MicroDiT


def randomized(model: MicroDiT, std: float = 0.1, seed: int = 0) -> MicroDiT:
    """Overwrite every parameter with N(0, std) noise.

    The reference init zeroes adaLN gates and the output layer, so a fresh model is the zero
    function; tests that need the network to actually mix tokens start from random weights.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def batch(config: MicroDiTConfig, size: int = 3, caption_len: int = 7,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean latents (B, C, H, W) and caption tokens (B, L, caption_dim)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(size, config.latent_channels, config.input_size, config.input_size,
                          generator=generator)
    text = torch.randn(size, caption_len, config.caption_dim, generator=generator)
    return latents, text
