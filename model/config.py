"""MicroDiT architecture configuration, presets and the layer-wise scaling rules.

One frozen dataclass describes the whole network; presets are named factories. The per-block
widths (layer-wise scaling, MoE placement) are derived here, in one place, so that the model and
the tests read the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

# SDPA kernels a model may pin; "auto" leaves the choice to torch (model/layers.py attention).
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
# Fields that choose kernels, not weights: a model built with any values loads the weights of a
# model built with any others (model/io.py), so they are not saved with the weights.
KERNEL_FIELDS = frozenset({"attention_backend", "fused_swiglu"})


@dataclass(frozen=True)
class MicroDiTConfig:
    """Architecture of a MicroDiT (reference.md, "Model")."""

    input_size: int = 32  # latent side in latent pixels (32 at 256 px, 64 at 512 px)
    latent_channels: int = 4  # VAE latent channels
    patch_size: int = 2  # latent pixels per patch side
    dim: int = 1024  # backbone width D
    depth: int = 28  # backbone blocks
    head_dim: int = 64  # channels per attention head
    mixer_dim: int = 768  # patch-mixer width Dm
    mixer_depth: int = 6  # patch-mixer blocks
    mixer_ffn_ratio: float = 4.0  # patch-mixer FFN width as a multiple of Dm
    attn_ratio_start: float = 0.5  # layer-wise scaling of the attention width, first block
    attn_ratio_end: float = 1.0  # ... last block
    ffn_ratio_start: float = 0.5  # layer-wise scaling of the FFN width, first block
    ffn_ratio_end: float = 4.0  # ... last block
    caption_ffn_ratio: float = 4.0  # FFN width of the caption self-attention block, x D
    multiple_of: int = 256  # FFN hidden widths are rounded up to a multiple of this
    caption_dim: int = 1024  # channels of a text-encoder token
    timestep_freq_dim: int = 512  # sinusoidal timestep features
    num_experts: int = 8  # experts per MoE layer
    expert_capacity: float = 2.0  # each expert takes capacity * T / E tokens per sample
    moe_every: int = 2  # blocks 1, 3, 5, ... (with 2) hold an MoE FFN; 0 disables MoE
    pos_interp_scale: float = 1.0  # position-grid divisor: 1 at 256 px, 2 at 512 px
    norm_eps: float = 1e-6  # LayerNorm epsilon
    attention_backend: str = "auto"  # one of ATTENTION_BACKENDS; pinned for every attention
    fused_swiglu: bool = False  # one (2 x hidden, D) GEMM for SwiGLU's w1 and w2 instead of two

    def __post_init__(self) -> None:
        positive = ("input_size", "latent_channels", "patch_size", "dim", "depth", "head_dim",
                    "mixer_dim", "multiple_of", "caption_dim", "timestep_freq_dim", "num_experts")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"MicroDiTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.mixer_depth < 0 or self.moe_every < 0:
            raise ValueError("MicroDiTConfig.mixer_depth and moe_every must be >= 0")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        for name in ("dim", "mixer_dim"):
            if getattr(self, name) % self.head_dim:
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of "
                                 f"head_dim {self.head_dim}")
        if self.dim % 4:
            # The 2-D sin-cos position embedding splits D into four equal sin/cos, row/col parts.
            raise ValueError(f"dim {self.dim} must be a multiple of 4")
        if self.timestep_freq_dim % 2:
            raise ValueError(f"timestep_freq_dim {self.timestep_freq_dim} must be even")
        for name in ("attn_ratio_start", "attn_ratio_end", "ffn_ratio_start", "ffn_ratio_end",
                     "mixer_ffn_ratio", "caption_ffn_ratio", "expert_capacity",
                     "pos_interp_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MicroDiTConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.attn_ratio_end > 1.0:
            raise ValueError(f"attn_ratio_end {self.attn_ratio_end} must be <= 1 "
                             "(attention is never wider than D)")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend {self.attention_backend!r} is not one of "
                             f"{list(ATTENTION_BACKENDS)}")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per image, T."""
        return self.grid_size ** 2

    @property
    def patch_channels(self) -> int:
        """Output values per patch: p * p * C."""
        return self.patch_size ** 2 * self.latent_channels


@dataclass(frozen=True)
class BlockSpec:
    """Widths of one DiT block after layer-wise scaling."""

    dim: int  # residual width
    attn_dim: int  # self-attention q/k/v width (heads = attn_dim / head_dim)
    ffn_hidden: int  # SwiGLU hidden width, or each expert's GELU hidden width when moe
    moe: bool  # expert-choice MoE FFN instead of the dense SwiGLU


def round_up(value: int, multiple: int) -> int:
    return multiple * ((value + multiple - 1) // multiple)


def linspace(start: float, end: float, num: int) -> list[float]:
    """numpy.linspace in plain floats, same operation order, so int(D * ratio) rounds the same."""
    if num == 1:
        return [start]
    step = (end - start) / (num - 1)
    return [start + i * step for i in range(num - 1)] + [end]


def ffn_hidden(dim: int, ratio: float, multiple_of: int, moe: bool) -> int:
    """Hidden width of an FFN of nominal width int(dim * ratio).

    SwiGLU has three matrices instead of two, so it keeps 2/3 of the nominal width (LLaMA rule);
    the two-matrix GELU experts keep all of it. Both are rounded up to `multiple_of`.
    """
    nominal = int(dim * ratio)
    return round_up(nominal if moe else int(2 * nominal / 3), multiple_of)


def attn_width(dim: int, ratio: float, head_dim: int) -> int:
    """Attention width: exactly D at ratio 1, else int(D * ratio) rounded up to 2 heads."""
    if ratio == 1.0:
        return dim
    return round_up(int(dim * ratio), 2 * head_dim)


def moe_indices(depth: int, every: int, last_dense: bool) -> set[int]:
    """Blocks with an MoE FFN: (i + 1) % every == 0, i.e. 1, 3, 5, ... for every=2.

    The backbone keeps its last block dense (last_dense); the mixer does not need to.
    """
    if every == 0:
        return set()
    stop = depth - 1 if last_dense else depth
    return {i for i in range(stop) if (i + 1) % every == 0}


def backbone_blocks(cfg: MicroDiTConfig) -> list[BlockSpec]:
    """Layer-wise scaled widths of the backbone blocks, first to last."""
    attn = linspace(cfg.attn_ratio_start, cfg.attn_ratio_end, cfg.depth)
    ffn = linspace(cfg.ffn_ratio_start, cfg.ffn_ratio_end, cfg.depth)
    moe = moe_indices(cfg.depth, cfg.moe_every, last_dense=True)
    return [BlockSpec(cfg.dim, attn_width(cfg.dim, attn[i], cfg.head_dim),
                      ffn_hidden(cfg.dim, ffn[i], cfg.multiple_of, i in moe), i in moe)
            for i in range(cfg.depth)]


def mixer_blocks(cfg: MicroDiTConfig) -> list[BlockSpec]:
    """Patch-mixer blocks: full attention width, constant FFN ratio."""
    moe = moe_indices(cfg.mixer_depth, cfg.moe_every, last_dense=False)
    return [BlockSpec(cfg.mixer_dim, cfg.mixer_dim,
                      ffn_hidden(cfg.mixer_dim, cfg.mixer_ffn_ratio, cfg.multiple_of, i in moe),
                      i in moe)
            for i in range(cfg.mixer_depth)]


def xl_2(**overrides: object) -> MicroDiTConfig:
    """MicroDiT_XL_2: 1,165.4M parameters."""
    return replace(MicroDiTConfig(), **overrides)


def tiny_2(**overrides: object) -> MicroDiTConfig:
    """MicroDiT_Tiny_2 (the ablation model): 200.7M parameters."""
    base = MicroDiTConfig(dim=512, depth=16, head_dim=32, mixer_dim=512, mixer_depth=4)
    return replace(base, **overrides)


def demo(**overrides: object) -> MicroDiTConfig:
    """A few-million-parameter MicroDiT that trains a few steps on CPU in seconds (256 px)."""
    base = MicroDiTConfig(dim=128, depth=4, head_dim=32, mixer_dim=96, mixer_depth=2,
                          multiple_of=64)
    return replace(base, **overrides)


def tiny(**overrides: object) -> MicroDiTConfig:
    """The smallest network that still has every part: for unit tests (8x8 latents)."""
    base = MicroDiTConfig(input_size=8, dim=64, depth=4, head_dim=16, mixer_dim=48,
                          mixer_depth=2, multiple_of=16, caption_dim=32, timestep_freq_dim=32)
    return replace(base, **overrides)


PRESETS: dict[str, Callable[..., MicroDiTConfig]] = {
    "XL_2": xl_2,
    "Tiny_2": tiny_2,
    "demo": demo,
    "tiny": tiny,
}


def preset(name: str, **overrides: object) -> MicroDiTConfig:
    """A named preset with field overrides.

    Example: preset("XL_2", input_size=64, pos_interp_scale=2.0) is XL_2 at 512 px.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown MicroDiT preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
