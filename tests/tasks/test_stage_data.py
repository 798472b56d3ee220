"""What each training stage reads: native-size filter at 512 px, resolutions encoded only where
a stage reads them, and a data order of its own per stage."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from infra.s3 import split_uri
from tasks.common.shards import LocalShard, commit_shard, iter_shard, read_manifest, write_manifest
from tasks.encode.run import encode_dataset, encoded_datasets, latent_prefix, raw_prefix, \
    resolution_plan
from tasks.encode.tiny import save_tiny_text_encoder, save_tiny_vae
from tasks.params import load_params
from tasks.train.loader import LatentLoader, LoaderConfig
from tasks.train.loop import Dist, open_loader


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return str(save_tiny_vae(root / "vae")), str(save_tiny_text_encoder(root / "text"))


def _params(s3_prefix, tiny_models):
    """Two stages at 32 px (all datasets) and two at 64 px that need a 64 px native short side
    and skip diffusiondb: the full profile's structure at a size the CPU encodes quickly."""
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, raw_prefix=f"{key}/raw",
                                  latents_prefix=f"{key}/latents")
    enc = dataclasses.replace(params.encode, vae=tiny_models[0], text_encoder=tiny_models[1],
                              batch_size=4)
    base = params.train.stages
    low = ("cc3m", "diffusiondb")
    stages = (dataclasses.replace(base[0], name="s1", resolution=32, datasets=low),
              dataclasses.replace(base[1], name="s2", resolution=32, datasets=low),
              dataclasses.replace(base[1], name="s3", resolution=64, loads="weights",
                                  datasets=("cc3m",), min_short_side=64),
              dataclasses.replace(base[1], name="s4", resolution=64, datasets=("cc3m",),
                                  min_short_side=64))
    train = dataclasses.replace(params.train, stages=stages, datasets=low)
    return dataclasses.replace(params, storage=storage, encode=enc, train=train)


def _jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _raw(params, name, natives) -> None:
    """One raw shard; each image stored at its native size capped to 40 px short side, as the
    download's max_short_side does, with the native size in its metadata."""
    with LocalShard() as out:
        for i, (w, h) in enumerate(natives):
            scale = min(1.0, 40 / min(w, h))
            stored = (max(1, round(w * scale)), max(1, round(h * scale)))
            out.write(f"{name}-{i}", {"jpg": _jpeg(stored), "txt": f"image {i}",
                                      "json": {"original_width": w, "original_height": h}})
        out.close()
        commit_shard(out.path, raw_prefix(params, name), "00000", out.samples)
    write_manifest(name, raw_prefix(params, name))


def test_resolution_plan_follows_the_stages(s3_prefix, tiny_models):
    params = _params(s3_prefix, tiny_models)
    assert resolution_plan(params, "cc3m") == {32: 0, 64: 64}
    assert resolution_plan(params, "diffusiondb") == {32: 0}  # no 64 px stage reads it
    assert resolution_plan(params, "coco") == {}  # evaluation reads raw COCO, not latents
    assert "coco" not in encoded_datasets(params) and "cc3m" in encoded_datasets(params)
    full = load_params(profile="full")
    assert resolution_plan(full, "diffusiondb") == {256: 0}
    assert resolution_plan(full, "cc3m") == {256: 0, 512: 512}
    assert resolution_plan(full, "coco") == {}


def test_high_resolution_stages_see_only_native_high_resolution_images(s3_prefix, tiny_models):
    params = _params(s3_prefix, tiny_models)
    # Native short sides 63, 64 (the boundary), 100 and 50.
    _raw(params, "cc3m", [(63, 90), (64, 64), (150, 100), (50, 80)])
    _raw(params, "diffusiondb", [(512, 512), (80, 64)])
    summary = encode_dataset(params, "cc3m")
    assert summary["samples"] == 4
    samples = dict(iter_shard(read_manifest(latent_prefix(params, "cc3m")).shards[0].uri))
    at64 = sorted(k for k, s in samples.items() if "lat64.npy" in s)
    assert at64 == ["cc3m-1", "cc3m-2"]  # 63 px is never upscaled to 64
    assert all("lat32.npy" in s for s in samples.values())
    assert [json.loads(samples[f"cc3m-{i}"]["json"])["native_short_side"] for i in range(4)] \
        == [63, 64, 100, 50]
    ddb = dict(iter_shard(read_manifest(latent_prefix(params, "diffusiondb")).shards[0].uri)) \
        if encode_dataset(params, "diffusiondb")["samples"] else {}
    assert ddb and all(set(s) >= {"lat32.npy"} and "lat64.npy" not in s for s in ddb.values())
    assert encode_dataset(params, "coco").get("skipped_dataset")

    # The loader of a 64 px stage reads only the images with a native short side >= 64.
    s3_stage = params.train.stage("s3")
    loader = open_loader(params, s3_stage, 8, Dist())
    keys = set(loader.next_batch()["keys"])
    assert keys == {"cc3m-1", "cc3m-2"} and loader.filtered == 2
    # A 32 px stage reads all of them.
    assert set(open_loader(params, params.train.stage("s1"), 64, Dist()).next_batch()["keys"]) \
        >= {"cc3m-0", "cc3m-3"}


def _latents(params, name, shards=3, per_shard=8) -> None:
    from tasks.common.npy import npy_bytes

    prefix = latent_prefix(params, name)
    for s in range(shards):
        with LocalShard() as out:
            for i in range(per_shard):
                out.write(f"{name}-{s}-{i}", {
                    "lat32.npy": npy_bytes(np.zeros((4, 8, 8), np.float16)),
                    "txtemb.npy": npy_bytes(np.ones((77, 8), np.float16)),
                    "txt": "x", "json": {"native_short_side": 300}})
            out.close()
            commit_shard(out.path, prefix, f"{s:05d}", out.samples)
    write_manifest(name, prefix)


def test_each_stage_draws_its_own_order_and_a_resumed_stage_keeps_it(s3_prefix, tiny_models):
    params = _params(s3_prefix, tiny_models)
    _latents(params, "cc3m")
    _latents(params, "diffusiondb")
    s1, s2 = params.train.stage("s1"), params.train.stage("s2")
    assert params.train.stage_seed(s1) != params.train.stage_seed(s2)
    first = [open_loader(params, s1, 8, Dist()).next_batch()["keys"] for _ in range(1)]
    one = open_loader(params, s1, 8, Dist())
    two = open_loader(params, s2, 8, Dist())
    seq1 = [one.next_batch()["keys"] for _ in range(4)]
    seq2 = [two.next_batch()["keys"] for _ in range(4)]
    assert seq1[0] == first[0]  # deterministic per stage
    assert seq1 != seq2  # stage 2 does not replay stage 1's batches
    # Resume: the saved position of stage 2 continues stage 2's own sequence.
    again = open_loader(params, s2, 8, Dist())
    again.next_batch()
    state = json.loads(json.dumps(again.state_dict()))
    resumed = open_loader(params, s2, 8, Dist())
    resumed.load_state_dict(state)
    assert [resumed.next_batch()["keys"] for _ in range(3)] == seq2[1:]


def test_loader_refuses_shards_without_native_sizes_under_a_size_filter(s3_prefix, tiny_models):
    params = _params(s3_prefix, tiny_models)
    prefix = latent_prefix(params, "cc3m")
    from tasks.common.npy import npy_bytes

    with LocalShard() as out:
        out.write("old-0", {"lat64.npy": npy_bytes(np.zeros((4, 16, 16), np.float16)),
                            "txtemb.npy": npy_bytes(np.ones((77, 8), np.float16)),
                            "txt": "x", "json": {}})
        out.close()
        commit_shard(out.path, prefix, "00000", out.samples)
    manifest = write_manifest("cc3m", prefix)
    loader = LatentLoader({"cc3m": manifest}, LoaderConfig(batch_size=1, resolution=64,
                                                           min_short_side=64,
                                                           prefetch_threads=0))
    with pytest.raises(KeyError, match="native_short_side"):
        loader.next_batch()
