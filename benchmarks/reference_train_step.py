"""The reference MicroDiT training step (SonyResearch/micro_diffusion), for ratios in one run.

The reference source is not part of this repository: copy `micro_diffusion/models/{dit,utils,
model}.py` of SonyResearch/micro_diffusion into the git-ignored `third_party/micro_diffusion/`
(docs/benchmarks.md). This module only imports it. `make_step` mirrors
`benchmarks.train_step.make_step` (same signature, same optimizer, clipping, autocast and
compile) so both networks are timed by the same loop; the loss is the reference's own
`LatentDiffusion.edm_loss`, called on a small holder instead of the Composer model, whose
constructor would need the VAE and the text encoder.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.train_step import BenchConfig, optimizer_step
from model.config import MicroDiTConfig

REFERENCE_ROOT = Path(__file__).resolve().parents[1] / "third_party" / "micro_diffusion"

# Imported at the top of the reference modules but unused by the DiT and its loss: Composer's
# base class, the text encoders' loaders and an attribute dict. Where one is not installed (the
# GPU image has none of the first three) an empty placeholder lets the import through.
UNUSED_IMPORTS = ("open_clip", "composer", "composer.models", "easydict", "einops")


def _empty_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    # A spec, because diffusers probes optional packages with importlib.util.find_spec.
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    sys.modules[name] = module
    return module


def _placeholder(name: str) -> None:
    module = _empty_module(name)
    module.ComposerModel = torch.nn.Module  # composer.models: only a base class here
    module.EasyDict = dict  # easydict: only used in the unused constructor
    module.rearrange = None  # einops: imported by utils.py, used by none of the DiT's layers


def _timm_stand_in() -> None:
    """A PatchEmbed with timm's interface, for CPU smoke runs on machines without timm.

    timm (on the GPU image) imports torchvision, which does not import beside the CPU torch of
    this project's venv; the stand-in is a strided convolution, as timm's default PatchEmbed is.
    """

    class PatchEmbed(torch.nn.Module):
        def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int,
                     bias: bool = True) -> None:
            super().__init__()
            self.patch_size = (patch_size, patch_size)
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = torch.nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, D)

    for name in ("timm", "timm.models"):
        _empty_module(name)
    _empty_module("timm.models.vision_transformer").PatchEmbed = PatchEmbed


def import_reference(allow_timm_stand_in: bool) -> tuple[types.ModuleType, types.ModuleType,
                                                         str]:
    """(reference dit module, reference model module, what provided PatchEmbed)."""
    if not (REFERENCE_ROOT / "micro_diffusion" / "models" / "dit.py").exists():
        raise FileNotFoundError(f"no reference source under {REFERENCE_ROOT}: copy "
                                "micro_diffusion/models/{dit,utils,model}.py of "
                                "SonyResearch/micro_diffusion there (docs/benchmarks.md)")
    for name in UNUSED_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            _placeholder(name)
    try:
        import timm
        patch_embed = f"timm {timm.__version__}"
    except ImportError:
        if not allow_timm_stand_in:
            raise
        _timm_stand_in()
        patch_embed = "stand-in (timm missing; smoke run only)"
    if str(REFERENCE_ROOT) not in sys.path:
        sys.path.insert(0, str(REFERENCE_ROOT))
    dit = importlib.import_module("micro_diffusion.models.dit")
    model = importlib.import_module("micro_diffusion.models.model")
    return dit, model, patch_embed


def build_reference(dit: types.ModuleType, cfg: MicroDiTConfig) -> torch.nn.Module:
    """The reference network for one of our configs; XL_2 is the reference's own factory."""
    if cfg == MicroDiTConfig():
        return dit.MicroDiT_XL_2()
    depth = cfg.depth
    return dit.DiT(
        input_size=cfg.input_size, patch_size=cfg.patch_size, in_channels=cfg.latent_channels,
        dim=cfg.dim, depth=depth, head_dim=cfg.head_dim, multiple_of=cfg.multiple_of,
        caption_channels=cfg.caption_dim, pos_interp_scale=cfg.pos_interp_scale,
        norm_eps=cfg.norm_eps, depth_init=True,
        qkv_multipliers=np.linspace(cfg.attn_ratio_start, cfg.attn_ratio_end, num=depth),
        ffn_multipliers=np.linspace(cfg.ffn_ratio_start, cfg.ffn_ratio_end, num=depth),
        use_patch_mixer=True, patch_mixer_depth=cfg.mixer_depth, patch_mixer_dim=cfg.mixer_dim,
        patch_mixer_qkv_ratio=1.0, patch_mixer_mlp_ratio=cfg.mixer_ffn_ratio, use_bias=False,
        num_experts=cfg.num_experts, expert_capacity=cfg.expert_capacity,
        experts_every_n=cfg.moe_every)


def make_step(model_config: MicroDiTConfig, bench: BenchConfig, mask_ratio: float,
              allow_timm_stand_in: bool = False,
              ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int, str]:
    """A closure running one reference optimizer step, its parameter count, PatchEmbed source.

    Inputs are what the reference trainer feeds its loss: latents (N, C, H, W) and caption
    tokens; the tokens are reshaped to the (N, 1, L, C) layout of its latent loader and cast to
    fp32 as its `forward` does.
    """
    dit_module, model_module, patch_embed = import_reference(allow_timm_stand_in)
    device = torch.device(bench.device)
    net = build_reference(dit_module, model_config).to(device).train()
    holder = types.SimpleNamespace(
        dit=net, randn_like=torch.randn_like,
        # EDM constants of the reference's LatentDiffusion at 256 px (res_256_pretrain.yaml).
        edm_config=types.SimpleNamespace(P_mean=-0.6, P_std=1.2, sigma_data=0.9))
    holder.model_forward_wrapper = functools.partial(
        model_module.LatentDiffusion.model_forward_wrapper, holder)
    edm_loss = model_module.LatentDiffusion.edm_loss
    # As the reference's train.py: weight decay 0.1 on everything, MoE parameters at half lr.
    named = list(net.named_parameters())
    groups = [{"params": [p for n, p in named if "moe" not in n.lower()]},
              {"params": [p for n, p in named if "moe" in n.lower()], "lr": bench.lr / 2}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=bench.lr,
                                  weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8,
                                  fused=device.type == "cuda")
    autocast_dtype = torch.bfloat16 if bench.dtype == "bf16" else torch.float32

    def forward_loss(latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=bench.dtype == "bf16"):
            y = text.unsqueeze(1).float()  # (N, L, C) -> (N, 1, L, C)
            return edm_loss(holder, latents.float(), y, mask_ratio=mask_ratio)

    compute = torch.compile(forward_loss) if bench.compile else forward_loss

    step = optimizer_step(compute, net, optimizer, bench.grad_clip)
    return step, sum(p.numel() for p in net.parameters()), patch_embed
