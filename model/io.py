"""MicroDiT persistence: a folder with config.json and model.safetensors.

The position embedding is not stored (it follows from the config), so weights trained at one
resolution load into a model built for another: stage 3 builds the 512 px model
(input_size 64, pos_interp_scale 2) and calls load_weights with the 256 px folder. Kernel
fields (KERNEL_FIELDS) are not stored either: the loading side picks its own kernels, and a fused
SwiGLU loads unfused weights and back (model/layers.py SwiGLU).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model.config import KERNEL_FIELDS, MicroDiTConfig
from model.ema import unwrap
from model.microdit import MicroDiT, build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Fields that set the token grid and its position embedding, not the weights.
RESOLUTION_FIELDS = frozenset({"input_size", "pos_interp_scale"})


def save_pretrained(model: nn.Module, directory: str | Path,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json and model.safetensors (float tensors as they are) into directory;
    `state` replaces the model's own state dict (e.g. weights gathered from shards)."""
    net = unwrap(model)
    if not isinstance(net, MicroDiT):
        raise TypeError(f"save_pretrained expects a MicroDiT, got {type(net).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    architecture = {k: v for k, v in asdict(net.config).items() if k not in KERNEL_FIELDS}
    config = {"architecture": "MicroDiT", **architecture}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    source = net.state_dict() if state is None else state
    tensors = {name: t.detach().cpu().contiguous() for name, t in source.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out


def load_config(directory: str | Path) -> MicroDiTConfig:
    """The MicroDiTConfig saved in directory; unknown keys are an error."""
    path = Path(directory) / CONFIG_NAME
    data = json.loads(path.read_text())
    if data.pop("architecture", None) != "MicroDiT":
        raise ValueError(f"{path}: not a MicroDiT config")
    known = {f.name for f in fields(MicroDiTConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown MicroDiTConfig key(s) {unknown}")
    return MicroDiTConfig(**data)


def load_weights(model: MicroDiT, directory: str | Path) -> MicroDiT:
    """Load saved weights into `model`, whose config may differ only in resolution and kernel
    fields."""
    saved = load_config(directory)
    differ = sorted(f.name for f in fields(MicroDiTConfig)
                    if f.name not in RESOLUTION_FIELDS | KERNEL_FIELDS
                    and getattr(saved, f.name) != getattr(model.config, f.name))
    if differ:
        raise ValueError(f"{directory}: architecture differs from the model in {differ}")
    device = next(model.parameters()).device
    state = load_file(str(Path(directory) / WEIGHTS_NAME), device=str(device))
    model.load_state_dict(state, strict=True)
    return model


def from_pretrained(directory: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, **overrides: object) -> MicroDiT:
    """Build the saved model (optionally at another resolution or with other kernels via
    overrides) and load it."""
    allowed = RESOLUTION_FIELDS | KERNEL_FIELDS
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(f"only {sorted(allowed)} can be overridden, got {bad}")
    config = replace(load_config(directory), **overrides)
    model = load_weights(build_model(config).to(device), directory)
    return model.to(dtype) if dtype is not None else model
