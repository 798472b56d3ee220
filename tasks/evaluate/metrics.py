"""FID and CLIP score through torchmetrics, with the real-image statistics kept separable.

torchmetrics' FrechetInceptionDistance accumulates, per set, the feature sum, the sum of outer
products and the count; FID is computed from those. `RealStats` is exactly the real-set triple,
so the COCO reference side is computed once, cached (real_stats.py), and loaded back into a fresh
metric: the FID itself always comes from torchmetrics' own code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load, save
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore
from tqdm import tqdm

from infra.settings import REPO_ROOT
from tasks.evaluate.inception import InceptionFeatures


@dataclass(frozen=True)
class RealStats:
    """Sufficient statistics of the real features: sum (D,), sum of x x^T (D, D), count."""

    feature_sum: torch.Tensor
    cov_sum: torch.Tensor
    count: int

    def to_bytes(self) -> bytes:
        return save({"feature_sum": self.feature_sum.double().contiguous(),
                     "cov_sum": self.cov_sum.double().contiguous(),
                     "count": torch.tensor([self.count], dtype=torch.int64)})

    @staticmethod
    def from_bytes(data: bytes) -> "RealStats":
        tensors = load(data)
        return RealStats(feature_sum=tensors["feature_sum"], cov_sum=tensors["cov_sum"],
                         count=int(tensors["count"][0]))


def new_fid(inception: InceptionFeatures) -> FrechetInceptionDistance:
    """A FID metric over our offline Inception; real features survive reset() (cached side)."""
    return FrechetInceptionDistance(feature=inception, reset_real_features=False,
                                    normalize=False)


def batched(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Stack single (3, H, W) uint8 images into (B, 3, H, W) batches."""
    batch: list[torch.Tensor] = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def add_images(fid: FrechetInceptionDistance, images: Iterable[torch.Tensor], real: bool,
               batch_size: int, total: int | None = None) -> int:
    """Feed single uint8 (3, H, W) images to one side of the metric; returns how many."""
    count = 0
    side = "real" if real else "generated"
    with tqdm(total=total, desc=f"Inception features ({side})", unit="img") as bar:
        for batch in batched(images, batch_size):
            fid.update(batch, real=real)
            count += batch.shape[0]
            bar.update(batch.shape[0])
    return count


def real_stats(fid: FrechetInceptionDistance) -> RealStats:
    return RealStats(feature_sum=fid.real_features_sum.detach().cpu().clone(),
                     cov_sum=fid.real_features_cov_sum.detach().cpu().clone(),
                     count=int(fid.real_features_num_samples))


def set_real_stats(fid: FrechetInceptionDistance, stats: RealStats) -> None:
    """Load cached real statistics into the metric (replacing its real side)."""
    if stats.feature_sum.shape != fid.real_features_sum.shape:
        raise ValueError(f"cached real statistics have {tuple(stats.feature_sum.shape)} "
                         f"features, the metric expects {tuple(fid.real_features_sum.shape)}")
    device = fid.real_features_sum.device
    fid.real_features_sum = stats.feature_sum.to(device, torch.float64)
    fid.real_features_cov_sum = stats.cov_sum.to(device, torch.float64)
    fid.real_features_num_samples = torch.tensor(stats.count, dtype=torch.long, device=device)


def fid_value(fid: FrechetInceptionDistance) -> float:
    return float(fid.compute())


def resolve_model_path(name: str) -> str:
    """A local folder (absolute or relative to the repo) if one exists, else a hub id."""
    path = Path(name)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return str(path) if path.is_dir() else name


class ProjectedCLIP(torch.nn.Module):
    """A CLIPModel whose get_*_features return the projected embedding tensor.

    transformers 5 returns a model output (projection in pooler_output) where torchmetrics 1.9
    expects the tensor itself.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def new_clip_score(model: str, device: str | torch.device = "cpu") -> CLIPScore:
    """torchmetrics CLIPScore over any CLIP checkpoint loadable with from_pretrained."""
    from transformers import CLIPModel, CLIPProcessor

    source = resolve_model_path(model)

    def loader():
        # torchmetrics accepts only a fixed list of hub ids by name; a loader lifts that limit.
        return (ProjectedCLIP(CLIPModel.from_pretrained(source)),
                CLIPProcessor.from_pretrained(source))

    return CLIPScore(model_name_or_path=loader).to(device)


def add_clip_pairs(metric: CLIPScore, pairs: Iterable[tuple[torch.Tensor, str]],
                   batch_size: int, total: int | None = None) -> int:
    """Feed (uint8 (3, H, W) image, caption) pairs to CLIPScore; returns how many."""
    images: list[torch.Tensor] = []
    captions: list[str] = []
    count = 0
    with tqdm(total=total, desc="CLIP score", unit="img") as bar:
        for image, caption in pairs:
            images.append(image)
            captions.append(caption)
            if len(images) == batch_size:
                # torchmetrics runs CLIP on the images' device: send them where the metric is.
                metric.update(torch.stack(images).to(metric.device), captions)
                count, images, captions = count + len(images), [], []
                bar.update(batch_size)
        if images:
            metric.update(torch.stack(images).to(metric.device), captions)
            count += len(images)
            bar.update(len(images))
    return count


def png_to_tensor(data: bytes) -> torch.Tensor:
    """PNG/JPEG bytes -> uint8 (3, H, W)."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def tensor_to_png(image: torch.Tensor) -> bytes:
    """uint8 (3, H, W) -> PNG bytes (lossless, so cached samples score as generated)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()
