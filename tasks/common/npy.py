"""Arrays as .npy bytes: how latents and text embeddings are stored in the latent shards.

The encode step writes them (npy_bytes) and the training loader reads them back (npy_load), so
the format lives below both.
"""

from __future__ import annotations

import io

import numpy as np


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
