"""Reference preprocessing: short-side bicubic resize, center crop, scale to [-1, 1], no flip.

The encode step prepares its training images with it, the caption step decodes the images it
captions with it, and the resize and crop are also the FID protocol's for real images
(tasks/evaluate/real_stats.py): one copy, below all three.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_image(data: bytes) -> Image.Image:
    """Decode and fully load (a truncated JPEG fails here, not later) as RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bicubic), then crop the center `size` x `size` square."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
