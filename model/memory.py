"""Analytic peak GPU memory of a MicroDiT training step, for the preflight.

peak = static + activations, in bytes:
- static: per parameter 4 (fp32 weights) + 4 (grads) + 8 (AdamW moments) + 4 (EMA copy)
  + 2 (bf16 autocast copy of the weights) = 22 bytes.
- activations: what autograd keeps for the backward pass, per image, per DiT block: a fixed
  number of bytes per token and channel of the block's widths (residual, attention and FFN;
  an MoE FFN counts its hidden width once per expert slot a token takes). The coefficient
  ACT_BYTES is the one free constant, fitted to the reference's measured 77 GiB (XL_2, 256 px,
  mask 0.75, micro-batch 256, compiled, one H100); the other reference point, 49 GiB at
  micro-batch 128 eager, is the check (tests/model/test_memory.py).
- with activation checkpointing a block keeps only its input (the residual stream, bf16) and
  one block at a time holds its full activations during the recomputation.
The patch-mixer runs on every token; the backbone only on the tokens kept after masking.
"""

from __future__ import annotations

from model.config import BlockSpec, MicroDiTConfig, backbone_blocks, ffn_hidden, mixer_blocks
from model.masking import kept_count

GIB = 1024 ** 3
STATIC_BYTES_PER_PARAM = 22
ACT_BYTES = 3.94  # bytes per token x width-unit kept for backward (fitted: 77 GiB, see above)
RESIDUAL_BYTES = 2  # bf16 residual stream stored per checkpointed block input


def parameter_count(cfg: MicroDiTConfig) -> int:
    """Exact parameter count, from a model built on the meta device (no memory, no init)."""
    import torch

    from model.microdit import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def _block_units(spec: BlockSpec, cfg: MicroDiTConfig) -> float:
    """Width units of one block per token: norms, q/k/v, attention out, cross-attention, FFN."""
    hidden = spec.ffn_hidden * (cfg.expert_capacity if spec.moe else 1.0)
    ffn = 2 * hidden if spec.moe else 3 * hidden  # GELU expert: in/act; SwiGLU: two gates + act
    return 6 * spec.dim + 4 * spec.attn_dim + ffn


def activation_bytes(cfg: MicroDiTConfig, mask_ratio: float, checkpointing: bool = False,
                     caption_len: int = 77) -> float:
    """Bytes kept for the backward pass of one image."""
    tokens = cfg.num_patches
    kept = kept_count(tokens, mask_ratio) if mask_ratio > 0 else tokens
    blocks = [(s, tokens) for s in mixer_blocks(cfg)] + [(s, kept) for s in backbone_blocks(cfg)]
    caption_hidden = ffn_hidden(cfg.dim, cfg.caption_ffn_ratio, cfg.multiple_of, False)
    caption = ACT_BYTES * caption_len * (6 * cfg.dim + 3 * caption_hidden)
    full = [ACT_BYTES * n * _block_units(s, cfg) for s, n in blocks]
    if not checkpointing:
        return caption + sum(full)
    inputs = sum(RESIDUAL_BYTES * n * s.dim for s, n in blocks)
    return caption + inputs + max(full)


def peak_gib(cfg: MicroDiTConfig, micro_batch: int, mask_ratio: float,
             checkpointing: bool = False, params: int | None = None) -> float:
    """Estimated peak memory (GiB) of one rank's training step at this micro-batch."""
    count = parameter_count(cfg) if params is None else params
    static = STATIC_BYTES_PER_PARAM * count
    return (static + micro_batch * activation_bytes(cfg, mask_ratio, checkpointing)) / GIB
