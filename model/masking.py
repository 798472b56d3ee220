"""Random patch masking: choose kept tokens, drop the rest, put outputs back in place.

Token order everywhere is row-major over the patch grid, the order of PatchEmbed's output.
"""

from __future__ import annotations

import torch


def kept_count(tokens: int, mask_ratio: float) -> int:
    """Tokens kept per sample: int(T * (1 - r)), as in the reference."""
    return int(tokens * (1 - mask_ratio))


def random_keep_indices(batch: int, tokens: int, mask_ratio: float, device: torch.device,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, K) indices of kept tokens: an independent random subset per sample, sorted.

    Sorting keeps raster order among the kept tokens; the network is order-equivariant after
    the position embedding, so it changes nothing but makes gathers friendlier to memory.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = kept_count(tokens, mask_ratio)
    if keep == 0:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no token out of {tokens}")
    noise = torch.rand(batch, tokens, device=device, generator=generator)  # (B, T)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, K)


def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens -> (B, K, D) kept tokens."""
    return x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(kept: torch.Tensor, ids_keep: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, K, C) kept outputs -> (B, T, C), dropped positions filled with the zero token."""
    full = kept.new_zeros(kept.shape[0], tokens, kept.shape[-1])
    return full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, kept.shape[-1]), kept)


def keep_mask(ids_keep: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, K) kept indices -> (B, T) bool, True where a token was kept."""
    mask = torch.zeros(ids_keep.shape[0], tokens, dtype=torch.bool, device=ids_keep.device)
    return mask.scatter(1, ids_keep, True)
