"""A square grid of generated samples as one PNG (logged to MLflow next to the FID), each tile
labelled with the prompt it was drawn for when the prompts are given. Evaluation, the training
sample grid and `tasks sample` all draw it, so it lives below them."""

from __future__ import annotations

import io
import math
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 2  # px of white between tiles
FONT_PX = 10  # label text height; Pillow's bundled font, so every machine draws the same
MAX_LABEL_LINES = 4  # a longer prompt is cut with an ellipsis
LABELLED_MIN_PX = 128  # labelled tiles are enlarged (nearest) to at least this width


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int,
         max_lines: int = MAX_LABEL_LINES) -> list[str]:
    """`text` in lines no wider than `width` px (a word wider than that is cut to fit),
    at most `max_lines` of them, the last ending in an ellipsis when text was left out."""
    lines: list[str] = []
    for word in text.split():
        while font.getlength(word) > width and len(word) > 1:
            word = word[:-1]
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "..."]
    return lines


def sample_grid(images: Sequence[torch.Tensor],
                labels: Sequence[str] | None = None) -> Image.Image:
    """uint8 (3, H, W) images, all one size, row-major into a ceil(sqrt(n))-wide grid; with
    `labels` (one per image) each tile has its label written under it, the tile enlarged by
    a whole factor (nearest neighbour, every pixel kept) so a line holds a few words."""
    if not images:
        raise ValueError("sample_grid needs at least one image")
    shape = images[0].shape
    if any(image.shape != shape for image in images):
        raise ValueError("sample_grid: all images must have the same shape")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"sample_grid: {len(labels)} labels for {len(images)} images")
    _, height, width = shape
    scale = math.ceil(LABELLED_MIN_PX / width) if labels is not None else 1
    height, width = height * scale, width * scale
    font = ImageFont.load_default(FONT_PX)
    wrapped = [wrap(label, font, width) for label in labels or []]
    line_px = FONT_PX + 2
    strip = max((len(lines) for lines in wrapped), default=0) * line_px  # label rows, px
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cell = height + strip
    grid = Image.new("RGB", (cols * width + (cols + 1) * PAD, rows * cell + (rows + 1) * PAD),
                     "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        row, col = divmod(i, cols)
        left, top = PAD + col * (width + PAD), PAD + row * (cell + PAD)
        tile = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        if scale > 1:
            tile = tile.resize((width, height), Image.Resampling.NEAREST)
        grid.paste(tile, (left, top))
        for n, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((left, top + height + n * line_px), line, fill="black", font=font)
    return grid


def grid_png(images: Sequence[torch.Tensor], labels: Sequence[str] | None = None) -> bytes:
    buffer = io.BytesIO()
    sample_grid(images, labels).save(buffer, format="PNG")
    return buffer.getvalue()
