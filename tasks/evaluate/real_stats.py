"""COCO reference side of FID, computed once and cached in S3 keyed by its protocol hash.

Real images are the COCO val2014 files as fetched (raw/coco-original/, which the download
keeps unfiltered and not re-encoded), brought to the generation resolution by the reference
preprocessing (short-side PIL bicubic resize, center crop; both in the protocol), then through
the same Inception wrapper as generated images. The cached object is the torchmetrics real-side
state (feature sum, outer-product sum, count) as safetensors, next to a JSON of the protocol
that produced it, keyed by the protocol's hash (which covers the images' shard sha256s):

    s3://BUCKET/<raw>/coco/_fid/real_stats/<hash>.safetensors
    s3://BUCKET/<raw>/coco/_fid/real_stats/<hash>.json
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from infra import s3
from tasks.common.images import center_crop_resize
from tasks.common.shards import Manifest, iter_shard
from tasks.evaluate.inception import InceptionFeatures
from tasks.evaluate.metrics import RealStats, add_images, new_fid, real_stats
from tasks.evaluate.protocol import FEATURE_RESIZE, REAL_RESIZE, manifest_id, protocol_hash


@dataclass
class Skips:
    """Real samples left out, by reason (reported with the result, never silent)."""

    corrupt_image: int = 0
    missing_image: int = 0
    corrupt_shard: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"corrupt_image": self.corrupt_image, "missing_image": self.missing_image,
                "corrupt_shard": self.corrupt_shard}


def image_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def iter_real_images(manifest: Manifest, resolution: int, skips: Skips) -> Iterator[torch.Tensor]:
    """Preprocessed real images in manifest order; unreadable ones are counted in `skips`."""
    for shard in manifest.shards:
        errors: list[str] = []
        for _key, sample in iter_shard(shard.uri, errors):
            data = sample.get("jpg") or sample.get("png")
            if data is None:
                skips.missing_image += 1
                continue
            try:
                with Image.open(io.BytesIO(data)) as image:
                    yield image_tensor(center_crop_resize(image.convert("RGB"), resolution))
            except (UnidentifiedImageError, OSError, ValueError):
                skips.corrupt_image += 1
        skips.corrupt_shard += bool(errors)


def real_protocol(manifest: Manifest, resolution: int, num_real: int | None,
                  inception: str) -> dict[str, Any]:
    """Everything that determines the real statistics."""
    return {"dataset": manifest.dataset, "manifest": manifest_id(manifest),
            "num_real": num_real, "resolution": resolution, "real_resize": REAL_RESIZE,
            "feature_resize": FEATURE_RESIZE, "feature_network": inception}


def stats_uris(root: str, protocol: dict[str, Any]) -> tuple[str, str]:
    """(statistics, protocol JSON) URIs under root for this protocol."""
    key = protocol_hash(protocol)
    return (s3.join(root, "real_stats", f"{key}.safetensors"),
            s3.join(root, "real_stats", f"{key}.json"))


def compute_real_stats(manifest: Manifest, resolution: int, num_real: int | None,
                       inception: InceptionFeatures, batch_size: int
                       ) -> tuple[RealStats, Skips]:
    """Features of the first num_real readable images (all when None) in manifest order."""
    skips = Skips()
    images = iter_real_images(manifest, resolution, skips)
    if num_real is not None:
        images = itertools.islice(images, num_real)
    fid = new_fid(inception)
    total = num_real if num_real is not None else manifest.samples
    count = add_images(fid, images, real=True, batch_size=batch_size, total=total)
    if num_real is not None and count < num_real:
        raise ValueError(f"{manifest.dataset}: only {count} readable images, num_real={num_real} "
                         f"(skipped {skips.as_dict()})")
    if count < 2:
        raise ValueError(f"{manifest.dataset}: {count} readable images; FID needs at least 2")
    return real_stats(fid), skips


def cached_real_stats(root: str, manifest: Manifest, resolution: int, num_real: int | None,
                      inception: InceptionFeatures, inception_name: str, batch_size: int
                      ) -> tuple[RealStats, dict[str, Any]]:
    """Real statistics for this protocol from the S3 cache, computing and storing them once.

    Returns the statistics and the stored protocol record (protocol + count + skips + cache URI).
    """
    protocol = real_protocol(manifest, resolution, num_real, inception_name)
    stats_uri, record_uri = stats_uris(root, protocol)
    if s3.exists(stats_uri) and s3.exists(record_uri):
        return RealStats.from_bytes(s3.get_bytes(stats_uri)), s3.get_json(record_uri)
    stats, skips = compute_real_stats(manifest, resolution, num_real, inception, batch_size)
    record = {"protocol": protocol, "count": stats.count, "skipped": skips.as_dict(),
              "uri": stats_uri}
    # Statistics first, record second: a record always points at complete statistics.
    s3.put_bytes(stats_uri, stats.to_bytes())
    s3.put_json(record_uri, record)
    return stats, record
