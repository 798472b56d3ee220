"""COCO FID reference statistics come from the val2014 images as served, not from the filtered,
re-encoded training shards: the download keeps every fetched image byte for byte in
raw/coco-original/ (one fetch per image), evaluate reads the statistics from there, records the
resize and crop, and caches them by content hash so a rerun does not recompute them."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
import uuid

import pytest

from infra import s3
from tasks.common.shards import iter_shard, read_manifest
from tasks.download.config import ImageParams
from tasks.download.run import download
from tasks.evaluate import real_stats
from tasks.evaluate.inception import inception_id, load_inception
from tasks.evaluate.protocol import REAL_RESIZE
from tasks.evaluate.score import coco_manifest, reference_manifest

# A training filter that drops the mirror's smaller COCO images (its sizes are 256-700 px),
# so the originals hold images that the training shards do not.
STRICT = ImageParams(min_short_side=400, max_short_side=512, jpeg_quality=95)


def _originals(summary: dict) -> dict[str, tuple[bytes, dict]]:
    manifest = read_manifest(summary["originals"]["manifest"])
    assert manifest is not None and manifest.dataset == "coco-original"
    out = {}
    for shard in manifest.shards:
        for key, files in iter_shard(shard.uri):
            out[key] = (files["jpg"], json.loads(files["json"]))
    return out


@pytest.fixture(scope="module")
def downloaded(mirror, s3_service):
    from tasks.params import load_params

    params = load_params(profile="demo")
    root = f"test/originals-{uuid.uuid4().hex[:12]}"
    params = dataclasses.replace(
        params, storage=dataclasses.replace(params.storage, raw_prefix=f"{root}/raw"),
        download=dataclasses.replace(params.download, image=STRICT),
        evaluate=dataclasses.replace(params.evaluate, device="cpu", resolution=64,
                                     feature_batch_size=8))
    return params, download(params, "coco")


def test_every_fetched_image_is_kept_as_served(downloaded, mirror):
    params, first = downloaded
    kept = _originals(first)
    assert first["failed"].get("too_small", 0) > 0  # the training filter dropped some
    assert len(kept) == first["attempted"] - first["failed"]["http_404"]
    assert len(kept) > first["samples"]  # more reference images than training samples
    for key, (data, meta) in kept.items():
        assert meta["url"].startswith(mirror)
        with urllib.request.urlopen(meta["url"]) as response:
            served = response.read()
        assert data == served, key  # not re-encoded, not resized
        assert meta["file_name"].startswith("COCO_val2014_") and len(meta["captions"]) == 5
    assert first["originals"]["samples"] == len(kept)

    again = download(params, "coco")
    assert again["shards_written"] == 0
    assert again["originals"]["manifest"] == first["originals"]["manifest"]


def test_a_download_from_before_originals_is_completed_on_rerun(downloaded):
    params, first = downloaded
    prefix = read_manifest(first["originals"]["manifest"]).prefix
    for uri in list(s3.list_uris(prefix + "/")):
        s3.delete(uri)
    rerun = download(params, "coco")
    assert rerun["shards_written"] == 0  # the training shards stay as they were
    assert rerun["manifest"] == first["manifest"]
    assert rerun["originals"]["manifest"] == first["originals"]["manifest"]


def test_reference_statistics_use_the_originals_and_are_cached(downloaded, monkeypatch):
    params, first = downloaded
    ev = params.evaluate
    reference = reference_manifest(params)
    assert reference.samples == first["originals"]["samples"] > first["samples"]
    _, fid_root = coco_manifest(params)
    inception = load_inception(ev.inception, "cpu")
    stats, record = real_stats.cached_real_stats(fid_root, reference, ev.resolution, None,
                                                 inception, inception_id(ev.inception), 8)
    protocol = record["protocol"]
    assert record["count"] == reference.samples and stats.count == reference.samples
    assert protocol["dataset"] == "coco-original" and protocol["real_resize"] == REAL_RESIZE
    assert protocol["resolution"] == ev.resolution and protocol["num_real"] is None
    assert s3.exists(record["uri"])

    def recompute(*args, **kwargs):
        raise AssertionError("cached statistics were recomputed")

    monkeypatch.setattr(real_stats, "compute_real_stats", recompute)
    again, same = real_stats.cached_real_stats(fid_root, reference_manifest(params),
                                               ev.resolution, None, inception,
                                               inception_id(ev.inception), 8)
    assert same == record and again.count == stats.count
