"""Optimizer parameter groups for MicroDiT.

The reference meant to train MoE parameters at half the learning rate but selected them by the
substring 'moe' in parameter names, which no parameter has (the MoE lives under 'mlp'), so every
parameter got the full rate. Here MoE parameters are found by module type.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from model.ema import unwrap
from model.moe import ExpertChoiceMoE


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 moe_lr_scale: float = 0.5) -> list[dict[str, Any]]:
    """Two AdamW groups: dense parameters at lr, MoE router and experts at lr * moe_lr_scale.

    Weight decay applies to every parameter, as in the reference. Schedulers that scale each
    group's initial lr (LambdaLR, the cosine schedulers) keep the ratio.
    """
    if lr <= 0 or weight_decay < 0 or moe_lr_scale <= 0:
        raise ValueError(f"need lr > 0, weight_decay >= 0, moe_lr_scale > 0; "
                         f"got {lr}, {weight_decay}, {moe_lr_scale}")
    net = unwrap(model)
    moe_ids = {id(p) for m in net.modules() if isinstance(m, ExpertChoiceMoE)
               for p in m.parameters()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    dense = [p for p in trainable if id(p) not in moe_ids]
    moe = [p for p in trainable if id(p) in moe_ids]
    groups = [{"name": "dense", "params": dense, "lr": lr, "weight_decay": weight_decay}]
    if moe:
        groups.append({"name": "moe", "params": moe, "lr": lr * moe_lr_scale,
                       "weight_decay": weight_decay})
    return groups
