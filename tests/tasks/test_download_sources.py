"""The reference's upstream variants on the mirror: DiffusionDB Large (WebP, two part folders)
and TextCaps from the official image zip (train + val)."""

from __future__ import annotations

import dataclasses
import io
import json
import urllib.request

import pyarrow.parquet as pq
from PIL import Image

from tasks.common.shards import iter_shard, read_manifest
from tasks.download.diffusiondb import part_url
from tasks.download.run import download


def _samples(summary: dict) -> dict[str, dict]:
    out = {}
    for shard in read_manifest(summary["manifest"]).shards:
        for key, files in iter_shard(shard.uri):
            out[key] = {**files, "json": json.loads(files["json"])}
    return out


def test_diffusiondb_large_parts_are_split_over_two_folders_at_10000():
    root = "https://huggingface.co/datasets/poloclub/diffusiondb/resolve/main"
    assert part_url(root, 10000, "large") == \
        f"{root}/diffusiondb-large-part-1/part-010000.zip"
    assert part_url(root, 10001, "large") == \
        f"{root}/diffusiondb-large-part-2/part-010001.zip"
    assert part_url(f"{root}/images", 7, "2m") == f"{root}/images/part-000007.zip"


def test_diffusiondb_large_reads_webp_from_both_folders_with_nsfw_filter(demo_params, mirror):
    base = demo_params().download.diffusiondb
    large = dataclasses.replace(base, variant="large",
                                metadata="{mirror}/diffusiondb/metadata-large.parquet",
                                parts="{mirror}/diffusiondb")
    summary = download(demo_params(diffusiondb=large), "diffusiondb")
    assert {"nsfw", "missing_in_archive", "too_small"} <= set(summary["failed"])
    with urllib.request.urlopen(f"{mirror}/diffusiondb/metadata-large.parquet") as resp:
        rows = pq.read_table(io.BytesIO(resp.read())).to_pylist()
    by_name = {r["image_name"]: r for r in rows}
    samples = _samples(summary)
    assert len(samples) == summary["samples"] > 0
    parts = set()
    for files in samples.values():
        meta = files["json"]
        row = by_name[meta["source_id"]]
        assert meta["source_id"].endswith(".webp")
        assert files["txt"].decode() == row["prompt"]  # caption = prompt
        assert max(row["image_nsfw"], row["prompt_nsfw"]) <= 0.2
        assert Image.open(io.BytesIO(files["jpg"])).size == (meta["width"], meta["height"])
        parts.add(meta["url"].rsplit("/", 2)[-2])
    assert parts == {"diffusiondb-large-part-1", "diffusiondb-large-part-2"}
    nsfw_rows = sum(max(r["image_nsfw"], r["prompt_nsfw"]) > 0.2 for r in rows)
    assert summary["failed"]["nsfw"] == nsfw_rows and summary["attempted"] == len(rows)


def _textcaps_docs(mirror: str) -> list[dict]:
    docs = []
    for split in ("train", "val"):
        with urllib.request.urlopen(f"{mirror}/textcaps/TextCaps_0.1_{split}.json") as resp:
            docs.append(json.load(resp))
    return docs


def test_textcaps_reads_train_and_val_images_from_the_official_zip(demo_params, mirror):
    base = demo_params().download.textcaps
    source = dataclasses.replace(base, images="{mirror}/textcaps/train_val_images.zip",
                                 val_annotations="{mirror}/textcaps/TextCaps_0.1_val.json")
    summary = download(demo_params(textcaps=source), "textcaps")
    train, val = _textcaps_docs(mirror)
    captions: dict[str, list[str]] = {}
    for entry in sorted(train["data"] + val["data"], key=lambda e: e["caption_id"]):
        captions.setdefault(entry["image_id"], []).append(entry["caption_str"])
    assert summary["attempted"] == len(captions)
    # One train and one val image are absent from the archive; nothing is fetched from Flickr.
    assert summary["failed"]["missing_in_archive"] == 2 and "placeholder" not in summary["failed"]
    samples = _samples(summary)
    assert {s["json"]["split"] for s in samples.values()} == {"train", "val"}
    for files in samples.values():
        meta = files["json"]
        assert meta["captions"] == captions[meta["source_id"]]
        assert files["txt"].decode() in meta["captions"]
        assert meta["url"].endswith("/textcaps/train_val_images.zip")


def test_textcaps_flickr_placeholder_is_a_counted_skip(demo_params):
    summary = download(demo_params(), "textcaps")  # the entries' Flickr URLs
    assert summary["failed"]["placeholder"] == 1
    for files in _samples(summary).values():
        assert Image.open(io.BytesIO(files["jpg"])).size != (500, 374)


def test_sa1b_caption_tar_is_streamed_like_the_published_release(mirror):
    from tasks.caption.run import caption_file

    from_tar = caption_file(f"{mirror}/sa1b/SA1B_caption.tar.gz")
    assert from_tar == caption_file(f"{mirror}/sa1b/captions.jsonl")
    assert "3" not in from_tar and from_tar["2"] == "" and from_tar["1"]
