"""The download image filter at its boundaries: min_short_side keeps, max_short_side downscales.

The reference filter skips an image whose short side is under 256 px (256 itself is kept) and
downscales one whose short side is over 512 px to exactly 512 (512 itself is left alone).
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tasks.download.config import ImageParams
from tasks.download.images import ImageRejected, prepare_image


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 30)).save(out, format="JPEG")
    return out.getvalue()


def stored_size(width: int, height: int, params: ImageParams = ImageParams()) -> tuple[int, int]:
    """(width, height) the filter stores, read back from the JPEG it wrote."""
    out = prepare_image(jpeg(width, height), params)
    assert Image.open(io.BytesIO(out.jpg)).size == (out.width, out.height)
    assert (out.original_width, out.original_height) == (width, height)
    return out.width, out.height


def test_defaults_are_the_reference_thresholds() -> None:
    assert (ImageParams().min_short_side, ImageParams().max_short_side) == (256, 512)


@pytest.mark.parametrize("size", [(255, 900), (900, 255), (255, 255)])
def test_short_side_255_is_rejected(size: tuple[int, int]) -> None:
    with pytest.raises(ImageRejected) as err:
        prepare_image(jpeg(*size), ImageParams())
    assert err.value.reason == "too_small"


@pytest.mark.parametrize("size", [(256, 900), (900, 256), (256, 256)])
def test_short_side_256_is_kept_unchanged(size: tuple[int, int]) -> None:
    assert stored_size(*size) == size


@pytest.mark.parametrize("size", [(512, 700), (700, 512), (512, 512)])
def test_short_side_512_is_not_resized(size: tuple[int, int]) -> None:
    assert stored_size(*size) == size


@pytest.mark.parametrize(("size", "stored"), [
    ((513, 700), (512, 698)),  # 512 * 700 / 513 = 698.6, truncated like torchvision Resize
    ((700, 513), (698, 512)),
    ((513, 513), (512, 512)),
])
def test_short_side_513_is_downscaled_to_512(size: tuple[int, int],
                                            stored: tuple[int, int]) -> None:
    assert stored_size(*size) == stored


def test_thresholds_come_from_the_params() -> None:
    params = ImageParams(min_short_side=100, max_short_side=200)
    with pytest.raises(ImageRejected):
        prepare_image(jpeg(99, 300), params)
    assert stored_size(100, 300, params) == (100, 300)
    assert stored_size(300, 200, params) == (300, 200)
    assert stored_size(300, 201, params) == (298, 200)  # 200 * 300 / 201 = 298.5
