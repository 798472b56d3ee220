"""A square grid of generated samples as one PNG (logged to MLflow next to the FID)."""

from __future__ import annotations

import io
import math
from typing import Sequence

import torch
from PIL import Image

PAD = 2  # px of white between tiles


def sample_grid(images: Sequence[torch.Tensor]) -> Image.Image:
    """uint8 (3, H, W) images, all one size, row-major into a ceil(sqrt(n))-wide grid."""
    if not images:
        raise ValueError("sample_grid needs at least one image")
    shape = images[0].shape
    if any(image.shape != shape for image in images):
        raise ValueError("sample_grid: all images must have the same shape")
    _, height, width = shape
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * width + (cols + 1) * PAD, rows * height + (rows + 1) * PAD),
                     "white")
    for i, image in enumerate(images):
        row, col = divmod(i, cols)
        tile = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        grid.paste(tile, (PAD + col * (width + PAD), PAD + row * (height + PAD)))
    return grid


def grid_png(images: Sequence[torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    sample_grid(images).save(buffer, format="PNG")
    return buffer.getvalue()
