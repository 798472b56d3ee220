"""Exponential moving average of the weights, with its half-life counted in images.

After each optimizer step that brought the total to `images_seen`, with n = images_seen minus the
count at the previous update:

    beta = 0.5 ** (n / half_life)        ema = beta * ema + (1 - beta) * weights

so the weight of anything older than `half_life` images has halved, whatever the batch size or
the update interval. With rampup_ratio r (NVlabs/edm uses 0.05), half_life is capped at
r * images_seen, so early in training the average forgets the random initialisation quickly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile (_orig_mod) and DDP/FSDP-style (.module) wrappers."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return unwrap(inner)
    return model


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP DTensor) parameter gathered whole; any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class EMA:
    """A frozen copy of a model whose weights follow the trained ones (use .model to sample)."""

    def __init__(self, model: nn.Module, half_life_images: float,
                 rampup_ratio: float | None = None) -> None:
        if half_life_images <= 0:
            raise ValueError(f"half_life_images must be > 0, got {half_life_images}")
        if rampup_ratio is not None and rampup_ratio <= 0:
            raise ValueError(f"rampup_ratio must be > 0 or None, got {rampup_ratio}")
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.half_life_images = half_life_images
        self.rampup_ratio = rampup_ratio
        self.images_seen = 0
        # The trained module and both parameter lists, matched once instead of every step.
        self._matched: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None = None

    def beta(self, images_seen: int) -> float:
        """Decay for an update that brings the image count from self.images_seen to images_seen."""
        half_life = self.half_life_images
        if self.rampup_ratio is not None:
            half_life = min(half_life, images_seen * self.rampup_ratio)
        return 0.5 ** ((images_seen - self.images_seen) / max(half_life, 1e-8))

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(averaged, trained) parameters matched by name; built once per trained module."""
        source = unwrap(model)
        if self._matched is None or self._matched[0] is not source:
            named = dict(source.named_parameters())
            targets = list(self.model.named_parameters())
            missing = [name for name, _ in targets if name not in named]
            if missing or len(named) != len(targets):
                raise ValueError(f"EMA and model parameters differ (missing: {missing[:5]})")
            self._matched = (source, [p for _, p in targets], [named[n] for n, _ in targets])
        return self._matched[1], self._matched[2]

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: int) -> float:
        """Move the average towards `model` in one fused op over all tensors; returns the beta
        used (a host number: computing it never waits on the device)."""
        if images_seen < self.images_seen:
            raise ValueError(f"images_seen went backwards: {images_seen} < {self.images_seen}")
        beta = self.beta(images_seen)
        averaged, trained = self._pairs(model)
        current = [_whole(p).detach().to(a.dtype) for a, p in zip(averaged, trained)]
        torch._foreach_lerp_(averaged, current, 1.0 - beta)
        self.images_seen = images_seen
        return beta

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.model.state_dict(), "images_seen": self.images_seen,
                "half_life_images": self.half_life_images, "rampup_ratio": self.rampup_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.images_seen = int(state["images_seen"])
