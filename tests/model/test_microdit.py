"""MicroDiT forward pass: shapes, masking, deferred masking, position embedding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.config import MicroDiTConfig
from model.layers import sincos_pos_embed_2d
from model.masking import (gather_tokens, keep_mask, kept_count, random_keep_indices,
                           scatter_tokens)
from model.microdit import MicroDiT, build_model
from tests.model.helpers import batch, randomized


def test_output_shapes(tiny_model: MicroDiT, tiny_config: MicroDiTConfig) -> None:
    latents, text = batch(tiny_config, size=3, caption_len=77)
    out = tiny_model(latents, torch.zeros(3), text)
    assert out.sample.shape == latents.shape and out.keep is None
    masked = tiny_model(latents, torch.zeros(3), text, mask_ratio=0.75)
    assert masked.sample.shape == latents.shape
    assert masked.keep.shape == (3, tiny_config.num_patches) and masked.keep.dtype == torch.bool
    assert masked.keep.sum(dim=1).tolist() == [kept_count(tiny_config.num_patches, 0.75)] * 3


def test_fresh_model_is_the_zero_function(tiny_config: MicroDiTConfig) -> None:
    # Zero final layer (reference init): the EDM denoiser starts as c_skip * x.
    latents, text = batch(tiny_config)
    assert build_model(tiny_config)(latents, torch.zeros(3), text).sample.abs().max() == 0


def test_mask_unmask_round_trip() -> None:
    x = torch.randn(4, 16, 5)
    ids = random_keep_indices(4, 16, 0.75, x.device, torch.Generator().manual_seed(0))
    assert ids.shape == (4, 4)
    assert all(len(set(row.tolist())) == 4 for row in ids)  # distinct per sample
    assert len({tuple(row.tolist()) for row in ids}) > 1  # independent across samples
    full = scatter_tokens(gather_tokens(x, ids), ids, 16)
    keep = keep_mask(ids, 16)
    torch.testing.assert_close(full[keep], x[keep])
    assert full[~keep].abs().max() == 0
    assert keep.sum().item() == 16


def test_mask_ratio_bounds() -> None:
    with pytest.raises(ValueError, match="keeps no token"):
        random_keep_indices(1, 4, 0.9, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_keep_indices(1, 4, 1.0, torch.device("cpu"))


def test_dropped_patches_output_zero(tiny_model: MicroDiT, tiny_config: MicroDiTConfig) -> None:
    latents, text = batch(tiny_config)
    out = tiny_model(latents, torch.zeros(3), text, mask_ratio=0.5)
    patch = tiny_config.patch_size
    per_patch = out.sample.abs().sum(1).unfold(1, patch, patch).unfold(2, patch, patch)
    per_patch = per_patch.sum((-1, -2)).flatten(1)  # (B, T) row-major
    assert torch.all(per_patch[~out.keep] == 0) and torch.all(per_patch[out.keep] > 0)


def test_masking_is_deferred_after_the_mixer(tiny_model: MicroDiT,
                                              tiny_config: MicroDiTConfig) -> None:
    """Kept outputs must depend on dropped patches' inputs: the mixer saw every patch."""
    latents, text = batch(tiny_config, size=1)
    generator = torch.Generator()
    first = tiny_model(latents, torch.zeros(1), text, 0.75, generator.manual_seed(3))
    dropped = (~first.keep[0]).nonzero()[0].item()
    row, col = divmod(dropped, tiny_config.grid_size)
    p = tiny_config.patch_size
    changed = latents.clone()
    changed[..., row * p:(row + 1) * p, col * p:(col + 1) * p] += 5.0
    second = tiny_model(changed, torch.zeros(1), text, 0.75, generator.manual_seed(3))
    assert torch.equal(first.keep, second.keep)
    assert not torch.allclose(first.sample, second.sample)


def test_mask_is_reproducible_with_a_generator(tiny_model: MicroDiT,
                                                tiny_config: MicroDiTConfig) -> None:
    latents, text = batch(tiny_config)
    a = tiny_model(latents, torch.zeros(3), text, 0.5, torch.Generator().manual_seed(7))
    b = tiny_model(latents, torch.zeros(3), text, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.sample, b.sample)


def test_conditioning_changes_output(tiny_model: MicroDiT, tiny_config: MicroDiTConfig) -> None:
    latents, text = batch(tiny_config)
    base = tiny_model(latents, torch.zeros(3), text).sample
    assert not torch.allclose(base, tiny_model(latents, torch.ones(3), text).sample)
    assert not torch.allclose(base, tiny_model(latents, torch.zeros(3), text * 0).sample)


def test_mixer_width_equal_to_backbone(tiny_config: MicroDiTConfig) -> None:
    config = replace(tiny_config, mixer_dim=tiny_config.dim)  # the Tiny_2 layout
    model = randomized(build_model(config))
    latents, text = batch(config)
    assert model(latents, torch.zeros(3), text, 0.5).sample.shape == latents.shape


def test_wrong_latent_size_is_a_clear_error(tiny_model: MicroDiT) -> None:
    with pytest.raises(ValueError, match="built for 8x8"):
        tiny_model(torch.randn(1, 4, 16, 16), torch.zeros(1), torch.randn(1, 7, 32))


def test_position_embedding_interpolation() -> None:
    at_256 = sincos_pos_embed_2d(64, 16, 1.0)  # 16 x 16 patches
    at_512 = sincos_pos_embed_2d(64, 32, 2.0)  # 32 x 32 patches at half spacing
    # Patch (2r, 2c) at 512 px sits where patch (r, c) sat at 256 px.
    torch.testing.assert_close(at_512.view(32, 32, 64)[::2, ::2], at_256.view(16, 16, 64))
    # First half encodes the column, second half the row.
    grid = at_256.view(16, 16, 64)
    torch.testing.assert_close(grid[0, :, :32], grid[5, :, :32])
    torch.testing.assert_close(grid[:, 0, 32:], grid[:, 5, 32:])
