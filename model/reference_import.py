"""Map a reference MicroDiT state dict (SonyResearch/micro_diffusion `model.dit`) onto MicroDiT.

The released checkpoints (Hugging Face VSehwag24/MicroDiT, `ckpts/*.pt`) are plain state dicts
in the reference's key layout. Every reference parameter has exactly one counterpart here with
the same shape; only names differ. Its two buffers need none: `pos_embed` is the fixed sin-cos
table (rebuilt from the config, checked against ours) and `mask_token` is zeros (checked).

Most of the config is read off the shapes. What the shapes do not fix is passed in: head_dim
(heads are not stored), the FFN rounding multiple, expert capacity and the layer-wise ratios,
with the XL_2 values as defaults; a wrong guess fails the strict shape check or, for head_dim,
the output comparison in tests/model/test_reference_import.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import torch

from model.config import MicroDiTConfig, moe_indices, xl_2
from model.layers import sincos_pos_embed_2d
from model.microdit import MicroDiT

# Buffers of the reference network that have no parameter here.
REFERENCE_BUFFERS = ("pos_embed", "mask_token")
# Prefixes a training wrapper may put in front of every key (DDP, torch.compile, a parent).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "dit.", "model.dit.")

# Reference module path -> ours, longest match first; block internals are renamed after this.
PREFIXES = (
    ("x_embedder.", "x_embed."),
    ("t_embedder.", "t_embed."),
    ("y_embedder.y_proj.", "caption_proj."),
    ("y_emb_preprocess.mlp.", "caption_block.ffn."),
    ("y_emb_preprocess.", "caption_block."),
    ("pooled_y_emb_process.", "pooled_proj."),
    ("patch_mixer_map_xin.", "mixer_in."),
    ("patch_mixer_map_xout.", "mixer_out."),
    ("patch_mixer_map_y.", "mixer_y."),
    ("patch_mixer.", "mixer."),
    ("blocks.", "blocks."),
    ("final_layer.norm_final.", "final.norm."),
    ("final_layer.adaLN_modulation.", "final.adaLN."),
    ("final_layer.linear.", "final.linear."),
)
# Inside a DiT block (mixer or backbone): reference name -> ours.
BLOCK_PARTS = (
    ("cross_attn.q_linear.", "cross_attn.q."),
    ("cross_attn.kv_linear.", "cross_attn.kv."),
    ("mlp.gate.", "ffn.router."),
    ("mlp.", "ffn."),
    ("adaLN_modulation.", "adaLN."),
)
_BLOCK = re.compile(r"^(mixer|blocks)\.(\d+)\.(.+)$")


def strip_wrapper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop one prefix that every key shares (e.g. `module.` from DDP)."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def rename(key: str) -> str | None:
    """Our parameter name for a reference key, or None when no rule covers it."""
    for old, new in PREFIXES:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    else:
        return None
    match = _BLOCK.match(key)
    if match:
        stack, index, rest = match.groups()
        for old, new in BLOCK_PARTS:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        key = f"{stack}.{index}.{rest}"
    return key


def _block_count(state: dict[str, torch.Tensor], stack: str) -> int:
    found = {int(m.group(1)) for key in state
             if (m := re.match(rf"^{re.escape(stack)}\.(\d+)\.norm1\.weight$", key))}
    if found != set(range(len(found))):
        raise ValueError(f"reference {stack} blocks are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _moe_every(state: dict[str, torch.Tensor], depth: int) -> int:
    """The MoE period that places MoE FFNs exactly where the backbone has them (0: none)."""
    moe = {i for i in range(depth) if f"blocks.{i}.mlp.gate.weight" in state}
    if not moe:
        return 0
    for every in range(1, depth + 1):
        if moe_indices(depth, every, last_dense=True) == moe:
            return every
    raise ValueError(f"MoE blocks {sorted(moe)} follow no every-n rule")


def _pos_interp_scale(pos_embed: torch.Tensor) -> float:
    """Read the scale off the table: channel 0 of patch 1 is sin(column / scale) = sin(1 / s)."""
    if pos_embed.shape[1] < 2:
        return 1.0
    return round(1.0 / math.asin(float(pos_embed[0, 1, 0])), 6)


def reference_config(state: dict[str, torch.Tensor], base: MicroDiTConfig | None = None,
                     **given: object) -> MicroDiTConfig:
    """The MicroDiTConfig of a reference state dict.

    Widths, depths, channels, experts and MoE placement are read from the shapes; the grid and
    pos_interp_scale from `pos_embed`. `given` sets what the shapes do not fix (head_dim,
    multiple_of, expert_capacity, ratios, norm_eps) on top of `base` (default: XL_2).
    """
    state = strip_wrapper(state)
    patch = state["x_embedder.proj.weight"]  # (D, C, p, p)
    dim, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    depth = _block_count(state, "blocks")
    mixer_depth = _block_count(state, "patch_mixer")
    gates = [v for k, v in state.items() if k.endswith(".mlp.gate.weight")]
    read: dict[str, object] = dict(
        latent_channels=channels, patch_size=patch_size, dim=dim, depth=depth,
        mixer_depth=mixer_depth,
        mixer_dim=state["patch_mixer.0.norm1.weight"].shape[0] if mixer_depth else dim,
        caption_dim=state["y_embedder.y_proj.fc1.weight"].shape[1],
        timestep_freq_dim=state["t_embedder.mlp.0.weight"].shape[1],
        moe_every=_moe_every(state, depth))
    if gates:
        read["num_experts"] = gates[0].shape[0]
    if "pos_embed" in state:
        grid = math.isqrt(state["pos_embed"].shape[1])
        read["input_size"] = grid * patch_size
        read["pos_interp_scale"] = _pos_interp_scale(state["pos_embed"])
    clash = sorted(set(read) & set(given))
    if clash:
        raise ValueError(f"{clash} are read from the checkpoint's shapes and cannot be given")
    return replace(base or xl_2(), **read, **given)


def convert(state: dict[str, torch.Tensor], config: MicroDiTConfig) -> dict[str, torch.Tensor]:
    """Our state dict for the reference weights: every key mapped, every shape equal.

    Fails naming the keys left over, missing or of another shape; checks that the reference's
    buffers hold what this model recomputes (the sin-cos table, a zero mask token).
    """
    state = strip_wrapper(state)
    with torch.device("meta"):
        # The reference's layout has w1 and w2 apart; a fused model stacks them on load.
        expected = MicroDiT(replace(config, fused_swiglu=False)).state_dict()
    out: dict[str, torch.Tensor] = {}
    unmapped, wrong, wrong_targets = [], [], set()
    for key, value in state.items():
        if key in REFERENCE_BUFFERS:
            continue
        ours = rename(key)
        if ours is None or ours not in expected:
            unmapped.append(key if ours is None else f"{key} -> {ours}")
        elif tuple(value.shape) != tuple(expected[ours].shape):
            wrong.append(f"{key} {tuple(value.shape)} -> {ours} {tuple(expected[ours].shape)}")
            wrong_targets.add(ours)
        else:
            out[ours] = value
    missing = sorted(set(expected) - set(out) - wrong_targets)
    problems = []
    if unmapped:
        problems.append(f"left over: {unmapped}")
    if wrong:
        problems.append(f"shape differs: {wrong}")
    if missing:
        problems.append(f"missing: {missing}")
    if problems:
        raise ValueError("reference state dict does not map onto MicroDiT: " + "; ".join(problems))
    _check_buffers(state, config)
    return out


def _check_buffers(state: dict[str, torch.Tensor], config: MicroDiTConfig) -> None:
    if "mask_token" in state and torch.count_nonzero(state["mask_token"]):
        raise ValueError("reference mask_token is not zero: dropped patches would differ")
    if "pos_embed" in state:
        ours = sincos_pos_embed_2d(config.dim, config.grid_size, config.pos_interp_scale)
        theirs = state["pos_embed"].float().reshape(ours.shape)
        error = (theirs - ours).abs().max().item()
        if error > 1e-4:
            raise ValueError(f"reference pos_embed differs from the sin-cos table of "
                             f"pos_interp_scale {config.pos_interp_scale} by {error:.2e}")


def import_reference(state: dict[str, torch.Tensor], **given: object) -> MicroDiT:
    """A MicroDiT holding the reference weights (float32, CPU); `given` as in reference_config."""
    config = reference_config(state, **given)
    net = MicroDiT(config)
    net.load_state_dict({k: v.float() for k, v in convert(state, config).items()}, strict=True)
    return net.eval()
