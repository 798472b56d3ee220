"""Each dataset downloaded from the mirror into real S3: shards, manifest, stats, idempotence."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import pytest
from PIL import Image

from infra import s3
from tasks.common.shards import iter_shard, read_manifest
from tasks.download.run import download, summary_markdown

# Failure reasons each mirror dataset must report (infra/mirror/corpus.py plants them).
EXPECTED = {
    "coco": {"http_404"},
    "sa1b": {"truncated_archive"},
    "textcaps": {"http_404", "empty_caption", "caption_not_utf8", "too_small"},
    "journeydb": {"decode_error", "empty_caption", "missing_in_archive", "too_small"},
    "diffusiondb": {"nsfw", "missing_in_archive", "too_small"},
}


def _samples(manifest) -> list[tuple[str, dict]]:
    out = []
    for shard in manifest.shards:
        data = s3.get_bytes(shard.uri)
        assert len(data) == shard.bytes
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        samples = list(iter_shard(shard.uri))
        assert len(samples) == shard.samples
        out += samples
    return out


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_dataset_downloads_filters_and_reruns_idempotently(dataset, demo_params):
    params = demo_params()
    first = download(params, dataset)
    manifest = read_manifest(first["manifest"])
    assert manifest is not None and manifest.samples == first["succeeded"] > 0
    assert first["attempted"] == first["succeeded"] + sum(first["failed"].values())
    assert EXPECTED[dataset] <= set(first["failed"])
    assert manifest.stats["failed"] == first["failed"]

    samples = _samples(manifest)
    keys = [k for k, _ in samples]
    assert len(keys) == len(set(keys)) == manifest.samples
    for key, files in samples:
        assert key.startswith(f"{dataset}-") and "." not in key
        assert set(files) == {"jpg", "txt", "json"}
        meta = json.loads(files["json"])
        width, height = Image.open(io.BytesIO(files["jpg"])).size
        assert (width, height) == (meta["width"], meta["height"])
        short, original_short = min(width, height), min(meta["original_width"],
                                                        meta["original_height"])
        assert short == (512 if original_short > 512 else original_short) and short >= 256
        assert meta["source_id"] and meta["url"].startswith("http")
        assert files["txt"].decode() == meta["caption"]
        assert bool(meta["caption"]) == (dataset != "sa1b")  # SA-1B captions come later
        if dataset == "diffusiondb":
            assert max(meta["image_nsfw"], meta["prompt_nsfw"]) <= 0.2
        if dataset == "coco":
            assert len(meta["captions"]) == 5 and meta["caption"] == meta["captions"][0]

    again = download(params, dataset)
    assert again["shards_written"] == 0 and again["shards_skipped"] == first["shards"]
    assert read_manifest(again["manifest"]).shards == manifest.shards
    assert "| failure reason | count |" in summary_markdown(again)


def test_sa1b_reports_expired_links_and_max_samples_caps(demo_params):
    capped = demo_params(sa1b=dataclasses.replace(demo_params().download.sa1b, max_samples=20))
    summary = download(capped, "sa1b")
    assert summary["archives_failed"] == {}  # the cap stops before the expired fourth link
    assert summary["attempted"] == 20 and summary["complete"]
    capped_manifest = read_manifest(summary["manifest"])
    capped_bytes = {s.uri: s3.get_bytes(s.uri) for s in capped_manifest.shards}
    full = demo_params()
    # Same prefix, another selection: downloaded under its own shard names, never mixed.
    summary = download(full, "sa1b")
    assert summary["archives_failed"] == {"sa_000003": "http_404"}
    assert not summary["complete"] and summary["attempted"] == 45
    manifest = read_manifest(summary["manifest"])
    assert not {s.uri for s in manifest.shards} & set(capped_bytes)
    assert all(s.name.endswith("-p" + summary["plan"][:8]) for s in manifest.shards)
    assert {uri: s3.get_bytes(uri) for uri in capped_bytes} == capped_bytes  # untouched
    # Back to the capped selection: found complete, nothing downloaded again.
    again = download(capped, "sa1b")
    assert again["shards_written"] == 0 and read_manifest(again["manifest"]).shards == \
        capped_manifest.shards


def test_fraction_takes_leading_archives(demo_params):
    source = dataclasses.replace(demo_params().download.diffusiondb, fraction=0.5)
    summary = download(demo_params(diffusiondb=source), "diffusiondb")
    assert summary["archives"] == 1 and summary["attempted"] == 25
