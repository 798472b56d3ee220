"""The reference image filter: decode, skip small images, downscale large ones, re-encode."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from tasks.download.config import ImageParams


class ImageRejected(Exception):
    """The image is unusable; `reason` is the label counted in the statistics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedImage:
    jpg: bytes
    width: int  # px, as stored
    height: int  # px, as stored
    original_width: int  # px, as served (after EXIF orientation)
    original_height: int  # px


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is raised as an error and counted like any bad image.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        raise ImageRejected("decode_error", str(err)) from err


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on white: transparent pixels would otherwise turn black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def downscaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the short side at `short_side`, the long side scaled and truncated.

    Truncation matches torchvision's Resize(int), which the reference scripts use.
    """
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def prepare_image(data: bytes, params: ImageParams) -> PreparedImage:
    """Filter and re-encode one image, or raise ImageRejected (decode_error, too_small)."""
    image = _decode(data)
    width, height = image.size
    if min(width, height) < params.min_short_side:
        raise ImageRejected("too_small", f"{width}x{height}")
    image = _to_rgb(image)
    if min(width, height) > params.max_short_side:
        size = downscaled_size(width, height, params.max_short_side)
        image = image.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=params.jpeg_quality)
    return PreparedImage(jpg=out.getvalue(), width=image.width, height=image.height,
                         original_width=width, original_height=height)
