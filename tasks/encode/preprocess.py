"""Reference preprocessing: short-side bicubic resize, center crop, scale to [-1, 1], no flip.

The resize and crop are also the FID protocol's for real images (tasks/evaluate/real_stats.py).
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


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# Parsed .npy headers by their raw bytes: every sample of a shard has the same few headers, and
# parsing one (a Python literal) costs more than reading the array behind it.
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


def npy_load(data: bytes) -> np.ndarray:
    """A read-only array over the bytes of a .npy file (no copy); C-order arrays only."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    start = 10 if data[6] == 1 else 12
    end = start + int.from_bytes(data[8:start], "little")
    header = data[start:end]
    meta = _NPY_HEADERS.get(header)
    if meta is None:
        buf = io.BytesIO(data)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(buf))
        if read is None:
            return np.load(io.BytesIO(data), allow_pickle=False)
        shape, fortran, dtype = read(buf)
        if fortran or dtype.hasobject:
            return np.load(io.BytesIO(data), allow_pickle=False)
        meta = _NPY_HEADERS.setdefault(header, (dtype, shape))
    dtype, shape = meta
    count = int(np.prod(shape))
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f".npy data is truncated: {len(data) - end} bytes for {shape} {dtype}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape)
