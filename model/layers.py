"""Building blocks of MicroDiT: embeddings, attention with QK-norm, SwiGLU and plain MLPs.

Linear layers inside attention and FFNs have no bias and LayerNorms have a scale but no bias, as
in the reference; the embedding MLPs, adaLN projections and the output layer keep their biases.
Two kernel options change how the maths runs, not its result: the attention backend pins one
SDPA kernel, and a fused SwiGLU computes w1 x and w2 x in one GEMM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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


# MicroDiTConfig.attention_backend names (model/config.py ATTENTION_BACKENDS) -> torch kernels.
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """SDPA over (B, H, T, hd) queries and (B, H, L, hd) keys/values -> (B, H, T, hd).

    "auto" lets torch pick the kernel per call; any other name pins that kernel, and torch raises
    "No viable backend" where it cannot run these inputs (efficient or cudnn on a CPU).
    """
    if backend == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(SDPA_BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v)


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)  # (B, H, T, hd)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (B, T, H * hd)


class SelfAttention(nn.Module):
    """Multi-head self-attention at width attn_dim (<= dim), QK-norm, fused SDPA kernel."""

    def __init__(self, dim: int, attn_dim: int, head_dim: int, eps: float,
                 backend: str = "auto") -> None:
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, T, attn_dim)
        q, k = _qk_norm(q, self.eps), _qk_norm(k, self.eps)
        out = attention(_split_heads(q, self.head_dim), _split_heads(k, self.head_dim),
                        _split_heads(v, self.head_dim), self.backend)
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    """Image tokens attend to caption tokens (both at width dim), QK-norm, fused SDPA kernel."""

    def __init__(self, dim: int, head_dim: int, eps: float, backend: str = "auto") -> None:
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        self.backend = backend
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = _qk_norm(self.q(x), self.eps)  # (B, T, D)
        k, v = self.kv(context).chunk(2, dim=-1)  # 2 x (B, L, D)
        k = _qk_norm(k, self.eps)
        out = attention(_split_heads(q, self.head_dim), _split_heads(k, self.head_dim),
                        _split_heads(v, self.head_dim), self.backend)
        return self.proj(_merge_heads(out))


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x), no biases.

    fused: w12 holds w1's rows, then w2's, so both inputs come from one GEMM over x. Either form
    loads the other's state dict (w1/w2 are stacked or w12 split on load); the parameter count
    is the same.
    """

    def __init__(self, dim: int, hidden: int, fused: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.fused = fused
        if fused:
            self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        else:
            self.w1 = nn.Linear(dim, hidden, bias=False)
            self.w2 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, value = self.w12(x).chunk(2, dim=-1)  # 2 x (B, T, hidden)
            return self.w3(F.silu(gate) * value)
        return self.w3(F.silu(self.w1(x)) * self.w2(x))

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str,
                              *args: object) -> None:
        # Runs before the child Linears read their keys: rewrite the other form's keys into this
        # one's. `state_dict` is load_state_dict's own copy, so the caller's dict is untouched.
        w1, w2, w12 = (f"{prefix}{name}.weight" for name in ("w1", "w2", "w12"))
        if self.fused and w1 in state_dict and w2 in state_dict:
            state_dict[w12] = torch.cat([state_dict.pop(w1), state_dict.pop(w2)])
        elif not self.fused and w12 in state_dict:
            state_dict[w1], state_dict[w2] = state_dict.pop(w12).chunk(2)
        super()._load_from_state_dict(state_dict, prefix, *args)


class CaptionBlock(nn.Module):
    """Pre-LN transformer block over caption tokens: self-attention, then SwiGLU FFN."""

    def __init__(self, dim: int, head_dim: int, ffn_hidden: int, eps: float,
                 backend: str = "auto", fused_swiglu: bool = False) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim, eps)
        self.attn = SelfAttention(dim, dim, head_dim, eps, backend)
        self.norm2 = layer_norm(dim, eps)
        self.ffn = SwiGLU(dim, ffn_hidden, fused_swiglu)

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
