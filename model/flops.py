"""Analytic matmul FLOPs of a MicroDiT forward pass, per image, for model FLOP utilisation.

Counts every matrix product (linears, the patch convolution, attention scores and values,
expert GEMMs) as 2 FLOPs per multiply-add, as torch.utils.flop_counter does; elementwise work
(norms, activations, modulation, gathers) is left out. A training step costs about 3x the
forward pass (the backward pass computes two products per forward product).
"""

from __future__ import annotations

from model.config import BlockSpec, MicroDiTConfig, backbone_blocks, ffn_hidden, mixer_blocks
from model.masking import kept_count
from model.moe import tokens_per_expert


def _block_macs(spec: BlockSpec, cfg: MicroDiTConfig, tokens: int, caption_len: int) -> int:
    d, a, h = spec.dim, spec.attn_dim, spec.ffn_hidden
    adaln = cfg.dim * 6 * d
    self_attn = tokens * d * 3 * a + 2 * tokens * tokens * a + tokens * a * d
    cross_attn = 2 * tokens * d * d + caption_len * d * 2 * d + 2 * tokens * caption_len * d
    if spec.moe:
        picked = cfg.num_experts * tokens_per_expert(tokens, cfg.num_experts, cfg.expert_capacity)
        ffn = tokens * d * cfg.num_experts + picked * 2 * d * h
    else:
        ffn = tokens * 3 * d * h
    return adaln + self_attn + cross_attn + ffn


def forward_flops(cfg: MicroDiTConfig, mask_ratio: float = 0.0, caption_len: int = 77) -> int:
    """Matmul FLOPs of one image's forward pass at this mask ratio and caption length."""
    dim, length, tokens = cfg.dim, caption_len, cfg.num_patches
    kept = kept_count(tokens, mask_ratio) if mask_ratio > 0 else tokens
    macs = tokens * cfg.latent_channels * cfg.patch_size ** 2 * dim  # patch embedding
    macs += cfg.timestep_freq_dim * dim + dim * dim  # timestep MLP
    macs += length * (cfg.caption_dim * dim + dim * dim)  # caption projection
    caption_hidden = ffn_hidden(dim, cfg.caption_ffn_ratio, cfg.multiple_of, False)
    macs += length * (4 * dim * dim + 3 * dim * caption_hidden) + 2 * length * length * dim
    macs += 2 * dim * dim  # pooled-caption MLP
    if cfg.mixer_depth and cfg.mixer_dim != dim:
        macs += (tokens + length) * dim * cfg.mixer_dim + kept * cfg.mixer_dim * dim
    macs += sum(_block_macs(s, cfg, tokens, length) for s in mixer_blocks(cfg))
    macs += sum(_block_macs(s, cfg, kept, length) for s in backbone_blocks(cfg))
    macs += dim * 2 * dim + kept * dim * cfg.patch_channels  # final layer
    return 2 * macs
