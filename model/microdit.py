"""MicroDiT: a sparse DiT with a patch-mixer and deferred masking (arXiv 2407.15811).

Data flow (B images, T patches, L caption tokens):
  latents (B, C, H, W) -> patches + fixed sin-cos positions (B, T, D)
  captions (B, L, caption_dim) -> MLP -> caption block -> y (B, L, D)
  c = MLP(mean of y over tokens) + timestep embedding, the adaLN condition (B, D)
  patch-mixer at width Dm over all T tokens -> mask (keep K of T) -> Dm -> D
  backbone DiT blocks over K tokens -> final adaLN layer -> zero tokens refill the dropped patches
The network returns its raw output F; EDM preconditioning lives in model/edm.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import BlockSpec, MicroDiTConfig, backbone_blocks, ffn_hidden, mixer_blocks
from model.layers import (CaptionBlock, CrossAttention, FinalLayer, Mlp, PatchEmbed,
                          SelfAttention, SwiGLU, TimestepEmbedder, layer_norm, modulate,
                          sincos_pos_embed_2d)
from model.masking import gather_tokens, keep_mask, random_keep_indices, scatter_tokens
from model.moe import ExpertChoiceMoE


class DiTOutput(NamedTuple):
    sample: torch.Tensor  # (B, C, H, W) raw network output; zeros on dropped patches
    keep: torch.Tensor | None  # (B, T) bool, True on kept patches; None when nothing was masked


class DiTBlock(nn.Module):
    """adaLN self-attention (gated), cross-attention to y (plain), adaLN FFN or MoE (gated)."""

    def __init__(self, spec: BlockSpec, cond_dim: int, cfg: MicroDiTConfig) -> None:
        super().__init__()
        eps = cfg.norm_eps
        self.norm1 = layer_norm(spec.dim, eps)
        self.attn = SelfAttention(spec.dim, spec.attn_dim, cfg.head_dim, eps,
                                  cfg.attention_backend)
        self.norm2 = layer_norm(spec.dim, eps)
        self.cross_attn = CrossAttention(spec.dim, cfg.head_dim, eps, cfg.attention_backend)
        self.norm3 = layer_norm(spec.dim, eps)
        self.ffn: nn.Module = (
            ExpertChoiceMoE(spec.dim, spec.ffn_hidden, cfg.num_experts, cfg.expert_capacity)
            if spec.moe else SwiGLU(spec.dim, spec.ffn_hidden, cfg.fused_swiglu))
        self.adaLN = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(cond_dim, 6 * spec.dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)  # (B, D)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross_attn(self.norm2(x), y)
        return x + gate2.unsqueeze(1) * self.ffn(modulate(self.norm3(x), shift2, scale2))


def _swiglu_inputs(ffn: SwiGLU) -> tuple[torch.Tensor, torch.Tensor]:
    """w1 and w2 of a SwiGLU, as views of w12 when fused: initialised in place, in the same order
    and shapes as the unfused pair, so a seed gives both forms the same weights."""
    if ffn.fused:
        return ffn.w12.weight[:ffn.hidden], ffn.w12.weight[ffn.hidden:]  # 2 x (hidden, D)
    return ffn.w1.weight, ffn.w2.weight


def _width_map(in_dim: int, out_dim: int, eps: float) -> nn.Module:
    """LayerNorm + bias-free linear between the mixer and backbone widths (identity if equal)."""
    if in_dim == out_dim:
        return nn.Identity()
    return nn.Sequential(layer_norm(in_dim, eps), nn.Linear(in_dim, out_dim, bias=False))


class MicroDiT(nn.Module):
    def __init__(self, config: MicroDiTConfig) -> None:
        super().__init__()
        self.config = config
        # Recompute each DiT block in the backward pass instead of storing its activations
        # (a training setting, not architecture: never saved with the weights).
        self.activation_checkpointing = False
        cfg, dim, eps = config, config.dim, config.norm_eps
        self.x_embed = PatchEmbed(cfg.latent_channels, dim, cfg.patch_size)
        # Not persisted: recomputed from the config, so weights load at any resolution.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(
            dim, cfg.grid_size, cfg.pos_interp_scale).unsqueeze(0), persistent=False)
        self.t_embed = TimestepEmbedder(dim, cfg.timestep_freq_dim)
        self.caption_proj = Mlp(cfg.caption_dim, dim, dim, eps)
        self.caption_block = CaptionBlock(
            dim, cfg.head_dim, ffn_hidden(dim, cfg.caption_ffn_ratio, cfg.multiple_of, False), eps,
            cfg.attention_backend, cfg.fused_swiglu)
        self.pooled_proj = Mlp(dim, dim, dim, eps)

        mixer_dim = cfg.mixer_dim if cfg.mixer_depth else dim
        self.mixer_in = _width_map(dim, mixer_dim, eps)
        self.mixer_y = _width_map(dim, mixer_dim, eps)
        self.mixer = nn.ModuleList(DiTBlock(s, dim, cfg) for s in mixer_blocks(cfg))
        self.mixer_out = _width_map(mixer_dim, dim, eps)

        self.blocks = nn.ModuleList(DiTBlock(s, dim, cfg) for s in backbone_blocks(cfg))
        self.final = FinalLayer(dim, cfg.patch_channels, eps)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The reference initialisation, all in one place.

        Xavier-uniform on every linear with zero biases; N(0, 0.02) on the embedding MLPs;
        truncated N(0, 0.02) on attention inputs, router and first FFN matrices; truncated
        N(0, std) on output-side matrices with std = 0.02 / sqrt(2 (i + 1)) in backbone block i
        and 0.02 / sqrt(2 depth) in the mixer; zero adaLN outputs and a zero final layer, so the
        network starts as the zero function and every block as the identity.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        conv = self.x_embed.proj.weight
        nn.init.xavier_uniform_(conv.view(conv.shape[0], -1))
        nn.init.zeros_(self.x_embed.proj.bias)
        for mlp in (self.t_embed.mlp[0], self.t_embed.mlp[2], self.caption_proj.fc1,
                    self.caption_proj.fc2, self.pooled_proj.fc1, self.pooled_proj.fc2):
            nn.init.normal_(mlp.weight, std=0.02)

        depth = self.config.depth
        for i, block in enumerate(self.blocks):
            self._init_block(block, 0.02 / (2 * (i + 1)) ** 0.5)
        for block in self.mixer:
            self._init_block(block, 0.02 / (2 * depth) ** 0.5)

        caption = self.caption_block
        nn.init.trunc_normal_(caption.attn.qkv.weight, std=0.02)
        w1, w2 = _swiglu_inputs(caption.ffn)
        nn.init.trunc_normal_(w1, std=0.02)
        nn.init.trunc_normal_(w2, std=0.02)
        # Zero outputs: the caption block starts as the identity on the projected tokens.
        nn.init.zeros_(caption.attn.proj.weight)
        nn.init.zeros_(caption.ffn.w3.weight)

        nn.init.zeros_(self.final.adaLN[-1].weight)
        nn.init.zeros_(self.final.linear.weight)

    @staticmethod
    def _init_block(block: DiTBlock, out_std: float) -> None:
        nn.init.trunc_normal_(block.attn.qkv.weight, std=0.02)
        nn.init.trunc_normal_(block.attn.proj.weight, std=out_std)
        nn.init.trunc_normal_(block.cross_attn.q.weight, std=0.02)
        nn.init.trunc_normal_(block.cross_attn.kv.weight, std=0.02)
        nn.init.trunc_normal_(block.cross_attn.proj.weight, std=out_std)
        ffn = block.ffn
        if isinstance(ffn, ExpertChoiceMoE):
            nn.init.trunc_normal_(ffn.router.weight, std=0.02)
            nn.init.trunc_normal_(ffn.w1, std=0.02)
            nn.init.trunc_normal_(ffn.w2, std=out_std)
        else:
            w1, w2 = _swiglu_inputs(ffn)
            nn.init.trunc_normal_(w1, std=0.02)
            nn.init.trunc_normal_(w2, std=out_std)
            nn.init.trunc_normal_(ffn.w3.weight, std=out_std)
        nn.init.zeros_(block.adaLN[-1].weight)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, text: torch.Tensor,
                mask_ratio: float = 0.0, generator: torch.Generator | None = None) -> DiTOutput:
        """x (B, C, H, W) network input, c_noise (B,), text (B, L, caption_dim).

        mask_ratio > 0 drops that share of patches after the patch-mixer (deferred masking).
        """
        cfg = self.config
        batch, _, height, width = x.shape
        if height != cfg.input_size or width != cfg.input_size:
            raise ValueError(f"latents are {height}x{width}; this model is built for "
                             f"{cfg.input_size}x{cfg.input_size} (set input_size)")
        tokens = cfg.num_patches
        h = self.x_embed(x) + self.pos_embed  # (B, T, D)

        y = self.caption_block(self.caption_proj(text))  # (B, L, D)
        c = self.t_embed(c_noise) + self.pooled_proj(y.mean(dim=1))  # (B, D)

        h = self.mixer_in(h)  # (B, T, Dm)
        y_mixer = self.mixer_y(y)  # (B, L, Dm)
        for block in self.mixer:
            h = self._block(block, h, y_mixer, c)

        ids_keep = None
        if mask_ratio > 0:
            ids_keep = random_keep_indices(batch, tokens, mask_ratio, x.device, generator)
            h = gather_tokens(h, ids_keep)  # (B, K, Dm)
        # After masking: the Dm -> D map only runs on kept tokens.
        h = self.mixer_out(h)  # (B, K, D)
        for block in self.blocks:
            h = self._block(block, h, y, c)
        out = self.final(h, c)  # (B, K, p * p * C)

        if ids_keep is not None:
            out = scatter_tokens(out, ids_keep, tokens)  # (B, T, p * p * C)
        keep = keep_mask(ids_keep, tokens) if ids_keep is not None else None
        return DiTOutput(self.unpatchify(out), keep)

    def _block(self, block: DiTBlock, h: torch.Tensor, y: torch.Tensor,
               c: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # Blocks are deterministic (expert choice has no sampling), so the recomputation
            # gives the stored activations exactly.
            return checkpoint(block, h, y, c, use_reentrant=False)
        return block(h, y, c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p * p * C) -> (B, C, H, W)."""
        cfg = self.config
        grid, p, ch = cfg.grid_size, cfg.patch_size, cfg.latent_channels
        x = x.view(x.shape[0], grid, grid, p, p, ch)  # (B, h, w, p, q, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, q)
        return x.reshape(x.shape[0], ch, grid * p, grid * p)  # (B, C, H, W)


def build_model(config: MicroDiTConfig) -> MicroDiT:
    """A freshly initialised MicroDiT (float32, on the CPU)."""
    return MicroDiT(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
