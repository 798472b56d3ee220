"""Caption SA-1B-like shards with a tiny random-init LLaVA (from_pretrained) or a caption file."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from infra import s3
from infra.s3 import split_uri
from tasks.caption.config import CaptionParams
from tasks.caption.llava import caption_batches, caption_images, generate, load, prepare
from tasks.caption.run import caption_shard, plan, sidecar_uri, summarize, summary_markdown
from tasks.caption.text import clean, garbage_reason
from tasks.caption.tiny import save_tiny_llava
from tasks.common.shards import (LocalShard, commit_shard, iter_shard, read_manifest,
                                 write_manifest)
from tasks.download.run import download
from tasks.encode.run import encode_dataset, latent_prefix
from tasks.encode.tiny import save_tiny_text_encoder, save_tiny_vae
from tasks.params import load_params


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    return str(save_tiny_llava(tmp_path_factory.mktemp("models") / "llava"))


def _jpeg(seed: int, size=(72, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _params(s3_prefix, **caption):
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, raw_prefix=f"{key}/raw",
                                  latents_prefix=f"{key}/latents")
    return dataclasses.replace(params, storage=storage,
                               caption=dataclasses.replace(params.caption, **caption))


def _raw_shard(params, samples: dict[str, dict]) -> str:
    prefix = params.storage.uri(params.storage.raw_prefix, "sa1b")
    with LocalShard() as out:
        for key, sample in samples.items():
            out.write(key, sample)
        out.close()
        record = commit_shard(out.path, prefix, "00000", out.samples)
    write_manifest("sa1b", prefix)
    return record.uri


def _sa1b_samples(n: int) -> dict[str, dict]:
    return {f"sa1b-{i}": {"jpg": _jpeg(i), "txt": "", "json": {"source_id": f"sa_{i}"}}
            for i in range(1, n + 1)}


def test_clean_strips_echo_turns_and_whitespace():
    prompt = "USER: <image>\nDescribe this image. ASSISTANT:"
    assert clean("USER: Describe this image. ASSISTANT:  a red\n car  ", prompt) == "a red car"
    assert clean("ASSISTANT: a dog on grass USER: and now?", prompt) == "a dog on grass"
    assert clean('  "a cat"  ', prompt) == "a cat"


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("a cat", "too_short"), ("1234 5678 90 !!", "not_text"),
    ("the the the the cat", "repetitive"), ("a red car parked on a quiet street", None)])
def test_garbage_reasons(text, reason):
    assert garbage_reason(text, min_chars=10, max_repeat_share=0.5) == reason


def test_tiny_llava_loads_and_batched_greedy_matches_one_by_one(tiny_llava):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    assert model.config.vision_config.image_size == 32
    captioner = load(CaptionParams(model=tiny_llava, device="cpu", max_new_tokens=8))
    assert captioner.processor.tokenizer.padding_side == "left"
    assert captioner.dtype == torch.float32
    images = [Image.open(io.BytesIO(_jpeg(i, size=(40 + 9 * i, 60)))) for i in range(5)]
    batched = [t for batch in caption_batches(captioner, [images[:3], images[3:]]) for t in batch]
    single = [generate(captioner, prepare(captioner, [im]))[0] for im in images]
    assert batched == single
    assert all(text.strip() for text in batched)
    assert len(set(batched)) > 1, "captions do not depend on the image"
    static = load(CaptionParams(model=tiny_llava, device="cpu", max_new_tokens=8,
                                cache_implementation="static"))
    assert generate(static, prepare(static, images[:3])) == batched[:3]


@pytest.mark.parametrize("engine,batch_size,cache", [
    ("generate", 13, "static"), ("continuous", 1, "dynamic"), ("continuous", 4, "dynamic"),
    ("continuous", 32, "dynamic")])
def test_every_cpu_engine_gives_plain_generates_greedy_captions(tiny_llava, engine, batch_size,
                                                                cache):
    # 40 new tokens: the random model ends some captions early (EOS), so in the continuous
    # engine rows leave and new images enter a batch whose cache is longer than their prompt.
    images = [Image.open(io.BytesIO(_jpeg(i, size=(40 + 9 * i, 60)))) for i in range(13)]
    base = CaptionParams(model=tiny_llava, device="cpu", max_new_tokens=40, batch_size=4)
    plain = load(base)
    expected = [generate(plain, prepare(plain, images[i:i + 4]))
                for i in range(0, len(images), 4)]
    expected = [text for batch in expected for text in batch]
    lengths = {len(plain.processor.tokenizer.tokenize(t)) for t in expected}
    assert min(lengths) < 39 < max(lengths), "no caption ended early: nothing left a batch"
    other = load(dataclasses.replace(base, engine=engine, batch_size=batch_size,
                                     cache_implementation=cache))
    assert list(caption_images(other, images)) == expected


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="compiled decode runs on CUDA only (caption.compile is ignored on CPU)")
def test_static_cache_and_compiled_decode_on_cuda_give_plain_generates_captions(tiny_llava):
    images = [Image.open(io.BytesIO(_jpeg(i, size=(40 + 9 * i, 60)))) for i in range(8)]
    base = CaptionParams(model=tiny_llava, device="cuda", dtype="fp32", max_new_tokens=24,
                         batch_size=4)
    expected = list(caption_images(load(base), images))
    for engine in ({"cache_implementation": "static", "compile": True},
                   {"engine": "continuous"}):
        assert list(caption_images(load(dataclasses.replace(base, **engine)), images)) == \
            expected, engine


def test_caption_shard_writes_a_sidecar_encode_reads_and_resumes(s3_prefix, tiny_llava, tmp_path):
    params = _params(s3_prefix, model=tiny_llava, device="cpu", batch_size=4, max_new_tokens=16,
                     min_chars=1, max_repeat_share=1.0)
    samples = _sa1b_samples(9)
    samples["sa1b-10"] = {"jpg": b"\xff\xd8\xff\xe0 not a jpeg", "txt": "", "json": {}}
    samples["sa1b-11"] = {"jpg": _jpeg(11), "txt": "  an existing   caption ", "json": {}}
    uri = _raw_shard(params, samples)
    models = tmp_path / "models"
    encode = dataclasses.replace(params.encode, vae=str(save_tiny_vae(models / "vae")),
                                 text_encoder=str(save_tiny_text_encoder(models / "text")),
                                 batch_size=4)
    # Encoded before captioning: only the sample that came with a caption is usable.
    encode_dataset(dataclasses.replace(params, encode=encode), "sa1b")
    assert read_manifest(latent_prefix(params, "sa1b")).samples == 1

    first = caption_shard(params, "sa1b", uri)
    assert first["resumed"] is False and first["samples"] == 11
    sidecar = s3.get_json(sidecar_uri(params, "sa1b", "00000"))
    assert sidecar["failed"] == {"sa1b-10": "bad_image"}
    assert sidecar["captions"]["sa1b-11"] == "an existing caption"
    assert set(sidecar["captions"]) | set(sidecar["failed"]) == set(samples)
    assert all(text == " ".join(text.split()) and text for text in sidecar["captions"].values())
    assert first["captioned"] == 9 and first["had_caption"] == 1 and first["failed_bad_image"] == 1

    again = caption_shard(params, "sa1b", uri)
    assert again["resumed"] is True and again["captioned"] == 9
    assert s3.get_json(sidecar_uri(params, "sa1b", "00000")) == sidecar

    # The new sidecar makes the committed latent shard stale: it is encoded again.
    summary = encode_dataset(dataclasses.replace(params, encode=encode), "sa1b")
    latents = read_manifest(latent_prefix(params, "sa1b"))
    assert latents.samples == len(sidecar["captions"]) == 10, summary
    texts = {key: s["txt"].decode() for key, s in iter_shard(latents.shards[0].uri)}
    assert texts == sidecar["captions"]

    # A caption param that changes the text keys a new sidecar: captioned anew, encoded anew
    # under a new latent shard name; the earlier sidecar and latent shard stay as they were.
    shorter = dataclasses.replace(params, caption=dataclasses.replace(params.caption,
                                                                      max_new_tokens=4))
    assert sidecar_uri(shorter, "sa1b", "00000") != sidecar_uri(params, "sa1b", "00000")
    redone = caption_shard(shorter, "sa1b", uri)
    assert redone["resumed"] is False and redone["captioned"] == 9
    old_shard, old_bytes = latents.shards[0], s3.get_bytes(latents.shards[0].uri)
    encoded = encode_dataset(dataclasses.replace(shorter, encode=encode), "sa1b")
    assert encoded["samples_encoded_this_run"] == 10
    newer = read_manifest(latent_prefix(params, "sa1b"))
    assert [s.name for s in newer.shards] != [old_shard.name] and len(newer.shards) == 1
    assert s3.get_bytes(old_shard.uri) == old_bytes
    assert encoded["shards_sha256"] == {newer.shards[0].name: newer.shards[0].sha256}
    # Nothing changed: nothing is redone.
    assert caption_shard(shorter, "sa1b", uri)["resumed"] is True
    assert encode_dataset(dataclasses.replace(shorter, encode=encode),
                          "sa1b")["samples_encoded_this_run"] == 0


def test_file_plus_llava_captions_only_the_images_the_file_lacks(s3_prefix, tiny_llava, tmp_path):
    captions_file = tmp_path / "captions.jsonl"
    captions_file.write_text("\n".join(json.dumps(r) for r in (
        {"image_id": "sa_1", "caption": "a  published caption of image one"},
        {"image_id": "sa_2", "caption": ""},
        {"image_id": "sa_4", "caption": "the published caption of image four"})) + "\n")
    params = _params(s3_prefix, source="file+llava", captions_file=str(captions_file),
                     model=tiny_llava, device="cpu", batch_size=2, max_new_tokens=12,
                     min_chars=1, max_repeat_share=1.0)
    samples = _sa1b_samples(6)
    samples["sa1b-6"]["jpg"] = b"\xff\xd8\xff\xe0 not a jpeg"
    uri = _raw_shard(params, samples)
    summary = caption_shard(params, "sa1b", uri)
    sidecar = s3.get_json(sidecar_uri(params, "sa1b", "00000"))
    assert sidecar["failed"] == {"sa1b-2": "empty", "sa1b-6": "bad_image"}
    assert sidecar["captions"]["sa1b-1"] == "a published caption of image one"
    assert sidecar["captions"]["sa1b-4"] == "the published caption of image four"
    assert (summary["from_file"], summary["not_in_file"], summary["llava"]) == (3, 3, 2)
    assert summary["captioned"] == 4
    # The two the file lacks got the captions the llava source gives the same images.
    llava = dataclasses.replace(params, caption=dataclasses.replace(params.caption,
                                                                    source="llava"))
    assert len({sidecar_uri(p, "sa1b", "00000") for p in (params, llava)}) == 2
    caption_shard(llava, "sa1b", uri)
    by_llava = s3.get_json(sidecar_uri(llava, "sa1b", "00000"))["captions"]
    assert {k: sidecar["captions"][k] for k in ("sa1b-3", "sa1b-5")} == \
        {k: by_llava[k] for k in ("sa1b-3", "sa1b-5")}
    assert "captioned with LLaVA" in summary_markdown(summarize("sa1b", [summary]))


def test_garbage_is_retried_once_then_counted_never_written(s3_prefix, tiny_llava):
    # One new token cannot reach 40 characters: every greedy caption and every retry fails.
    params = _params(s3_prefix, model=tiny_llava, device="cpu", batch_size=3, max_new_tokens=1,
                     min_chars=40)
    uri = _raw_shard(params, _sa1b_samples(5))
    summary = caption_shard(params, "sa1b", uri)
    sidecar = s3.get_json(sidecar_uri(params, "sa1b", "00000"))
    assert summary["retried"] == 5 and summary["captioned"] == 0
    assert sidecar["captions"] == {}
    assert set(sidecar["failed"]) == set(_sa1b_samples(5))
    assert set(sidecar["failed"].values()) <= {"too_short", "empty", "not_text"}


def test_caption_file_source_needs_no_model(demo_params):
    base = demo_params()
    params = dataclasses.replace(base, caption=dataclasses.replace(
        base.caption, source="file", model="no/such-model",
        captions_file="{mirror}/sa1b/captions.jsonl"))
    download(params, "sa1b")
    results = [caption_shard(params, "sa1b", uri) for uri in plan(params, "sa1b")]
    failed = {}
    captions = {}
    for uri in plan(params, "sa1b"):
        sidecar = s3.get_json(sidecar_uri(params, "sa1b", uri.rsplit("/", 1)[1][:-4]))
        failed.update(sidecar["failed"])
        captions.update(sidecar["captions"])
    # The mirror's caption file has image 2 empty and image 3 missing.
    assert failed == {"sa1b-2": "empty", "sa1b-3": "not_in_caption_file"}
    assert sum(r["samples"] for r in results) == len(captions) + 2
    assert all(len(text) >= params.caption.min_chars for text in captions.values())
