"""Building blocks of MicroDiT: embeddings, attention with QK-norm, SwiGLU and plain MLPs.

Linear layers inside attention and FFNs have no bias and LayerNorms have a scale but no bias, as
in the reference; the embedding MLPs, adaLN projections and the output layer keep their biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    """LayerNorm with a learnt scale and no bias."""
    return nn.LayerNorm(dim, eps=eps, bias=False)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, T, D) scaled and shifted per sample by (B, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 1e4) -> torch.Tensor:
    """Sinusoidal features of a (B,) float tensor: (B, dim), cosines then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): sines then cosines over dim / 2 frequencies."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.double()[:, None] * omega[None]  # (M, dim / 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int, interp_scale: float) -> torch.Tensor:
    """Fixed 2-D position embedding, (grid_size ** 2, dim) in row-major patch order.

    The first half of the channels encodes the column, the second half the row. Positions are
    divided by interp_scale, so a 32-patch grid (512 px) at scale 2 spans the same range as 16
    patches (256 px) at scale 1: that is what lets 256 px weights continue at 512 px.
    """
    coords = torch.arange(grid_size, dtype=torch.float64) / interp_scale
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each
    col_emb = sincos_1d(dim // 2, cols.reshape(-1))  # (G * G, D / 2)
    row_emb = sincos_1d(dim // 2, rows.reshape(-1))  # (G * G, D / 2)
    return torch.cat([col_emb, row_emb], dim=1).float()


class Mlp(nn.Module):
    """fc1 -> tanh-GELU -> optional LayerNorm -> fc2, with biases (embedding MLPs)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, norm_eps: float | None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.norm = layer_norm(hidden, norm_eps) if norm_eps is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class TimestepEmbedder(nn.Module):
    """c_noise (B,) -> sinusoidal features -> MLP -> (B, D)."""

    def __init__(self, dim: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(features)


class PatchEmbed(nn.Module):
    """(B, C, H, W) latents -> (B, T, D) tokens, one per p x p patch, row-major."""

    def __init__(self, channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/p, W/p) -> (B, T, D)


def _qk_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    # QK-norm over the whole projection width (all heads together), without affine parameters,
    # exactly as the reference; it keeps attention logits bounded in bf16. Autocast runs
    # layer_norm in float32: cast back so q, k and v reach the fused kernel in one dtype.
    return F.layer_norm(x, (x.shape[-1],), eps=eps).to(x.dtype)


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)  # (B, H, T, hd)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (B, T, H * hd)


class SelfAttention(nn.Module):
    """Multi-head self-attention at width attn_dim (<= dim), QK-norm, fused SDPA kernel."""

    def __init__(self, dim: int, attn_dim: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, T, attn_dim)
        q, k = _qk_norm(q, self.eps), _qk_norm(k, self.eps)
        out = F.scaled_dot_product_attention(_split_heads(q, self.head_dim),
                                             _split_heads(k, self.head_dim),
                                             _split_heads(v, self.head_dim))
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    """Image tokens attend to caption tokens (both at width dim), QK-norm, fused SDPA kernel."""

    def __init__(self, dim: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = _qk_norm(self.q(x), self.eps)  # (B, T, D)
        k, v = self.kv(context).chunk(2, dim=-1)  # 2 x (B, L, D)
        k = _qk_norm(k, self.eps)
        out = F.scaled_dot_product_attention(_split_heads(q, self.head_dim),
                                             _split_heads(k, self.head_dim),
                                             _split_heads(v, self.head_dim))
        return self.proj(_merge_heads(out))


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class CaptionBlock(nn.Module):
    """Pre-LN transformer block over caption tokens: self-attention, then SwiGLU FFN."""

    def __init__(self, dim: int, head_dim: int, ffn_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim, eps)
        self.attn = SelfAttention(dim, dim, head_dim, eps)
        self.norm2 = layer_norm(dim, eps)
        self.ffn = SwiGLU(dim, ffn_hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y + self.attn(self.norm1(y))
        return y + self.ffn(self.norm2(y))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map to the p * p * C values of each patch."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = layer_norm(dim, eps)
        self.adaLN = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))
