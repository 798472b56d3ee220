"""The demo corpus depicts its captions, and the attribute classifier reads them back.

Images come through the real download step from the mirror, then through the encode step's
resize and center crop at the demo's 64 px, so a caption that no longer matches what survives
preprocessing fails here.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from demo.attributes import (ATTRIBUTES, BACKGROUNDS, HELD_OUT, REPORT_SCENES, Scene, chance,
                             classify, parse_prompt, prompt_following, report_prompts)
from infra.mirror.corpus import STYLES, caption, make_image, scene
from tasks.common.images import center_crop_resize, decode_image
from tasks.common.shards import iter_shard, read_manifest
from tasks.download.run import download

TRAIN = ("cc3m", "textcaps", "journeydb", "diffusiondb")  # SA-1B's captions come later


def _downloaded(params, dataset: str) -> list[tuple[np.ndarray, list[str]]]:
    manifest = read_manifest(download(params, dataset)["manifest"])
    out = []
    for shard in manifest.shards:
        for _key, files in iter_shard(shard.uri):
            meta = json.loads(files["json"])
            image = center_crop_resize(decode_image(files["jpg"]), 64)
            out.append((np.asarray(image), meta.get("captions") or [meta["caption"]]))
    return out


def test_downloaded_images_depict_their_captions_at_64px(demo_params):
    params = demo_params()
    held_in_train, held_in_coco, styles = 0, 0, set()
    for dataset in (*TRAIN, "coco"):
        samples = _downloaded(params, dataset)
        assert len(samples) >= 10, dataset
        for image, captions in samples:
            wanted = {parse_prompt(text) for text in captions} - {None}  # planted defects
            assert len(wanted) == 1, (dataset, captions)
            want = wanted.pop()
            assert classify(image) == want, (dataset, captions[0])
            held_in_train += dataset != "coco" and want.held_out
            held_in_coco += dataset == "coco" and want.held_out
            styles.add((dataset, captions[0].split()[0]))
    assert held_in_train == 0  # no training set shows a held-out pair
    assert held_in_coco >= 3  # COCO val asks for some
    assert ("coco", "A") in styles or ("coco", "There") in styles


def test_captions_follow_each_dataset_style():
    rng = random.Random(0)
    item = Scene("circle", "red", "top left", "gray")
    for style, templates in STYLES.items():
        for _ in range(10):
            text = caption(rng, item, style)
            assert parse_prompt(text) == item, (style, text)
        assert len({t.format(c="", s="", p="", b="") for t in templates}) == len(templates)
    assert len(caption(rng, item, "alt")) < len(caption(rng, item, "llava"))


def test_corpus_draws_are_seeded_and_never_held_out_for_training():
    a = [scene(random.Random(7)) for _ in range(3)]
    assert a == [scene(random.Random(7)) for _ in range(3)]
    rng = random.Random(1)
    assert not any(scene(rng).held_out for _ in range(500))
    share = sum(scene(rng, held_out_share=0.25).held_out for _ in range(2000)) / 2000
    assert 0.2 < share < 0.3


@pytest.mark.parametrize("size", [(64, 64), (400, 256), (256, 700), (900, 512)])
def test_classifier_reads_every_scene_at_native_size_after_the_crop(size):
    rng = random.Random(size[0])
    wrong = 0
    for shape in ("square", "circle", "triangle"):
        for color in ("red", "green", "blue", "yellow"):
            for position in ("top left", "top right", "bottom left", "bottom right"):
                for background in ("white", "gray", "black"):
                    item = Scene(shape, color, position, background)
                    image = center_crop_resize(make_image(rng, size, item), 64)
                    wrong += classify(np.asarray(image)) != item
    assert wrong == 0


def test_classifier_tolerates_blur_and_rejects_blank_images():
    item = Scene("triangle", "blue", "bottom right", "white")
    image = make_image(random.Random(0), (256, 256), item).filter(ImageFilter.GaussianBlur(4))
    assert classify(np.asarray(center_crop_resize(image, 64))) == item
    channels_first = np.asarray(center_crop_resize(image, 64)).transpose(2, 0, 1)
    assert classify(channels_first) == item
    assert classify(np.full((64, 64, 3), 128, np.uint8)) is None


@pytest.mark.parametrize("shape", ["square", "circle", "triangle"])
def test_classifier_reads_shapes_as_blurred_as_the_demo_vae_decodes_them(shape):
    # A 2 px blur at 64 px rounds corners the way the demo VAE does. Bounding-box fill read
    # such triangles (and decoded squares) as circles; the row-width profile keeps them apart.
    for position in ("top left", "bottom right"):
        item = Scene(shape, "red", position, "white")
        image = make_image(random.Random(1), (256, 256), item).filter(ImageFilter.GaussianBlur(8))
        assert classify(np.asarray(center_crop_resize(image, 64))) == item


def test_prompt_following_scores_seen_and_held_out_apart_with_chance():
    rng = random.Random(0)
    seen = Scene("square", "red", "top left", "white")
    held = Scene(*sorted(HELD_OUT)[0], "bottom right", "black")
    right = np.asarray(center_crop_resize(make_image(rng, (64, 64), seen), 64))
    blank = np.full((64, 64, 3), 245, np.uint8)
    wrong_color = np.asarray(make_image(rng, (64, 64), Scene("square", "blue", "top left")))
    held_image = np.asarray(make_image(rng, (64, 64), held))
    prompts = [(right, "a red square in the top left corner"),
               (wrong_color, "red square, top left, on white"),
               (blank, "a red square at the top left"),
               (held_image, caption(rng, held, "describe")),
               (right, "a photo of a cat")]
    score = prompt_following(prompts)
    assert score["seen"]["n"] == 3 and score["held_out"]["n"] == 1 and score["unparsed"] == 1
    assert score["seen"]["all"] == pytest.approx(1 / 3)
    assert score["seen"]["shape"] == pytest.approx(2 / 3)
    assert score["seen"]["color"] == pytest.approx(1 / 3)
    assert score["held_out"]["all"] == 1.0
    assert score["chance"]["all"] == pytest.approx(1 / 48)
    assert set(ATTRIBUTES) <= set(chance())
    assert prompt_following([(right, "a photo of a cat")]) is None
    # The report set is scored apart: its images count in no tune group, nor tune's in it.
    report = [(right, "A red square in the top left corner of a white picture."),
              (blank, "A red square in the top left corner of a gray picture.")]
    apart = prompt_following(prompts, report)
    assert apart["report"] == {"n": 2, "shape": 0.5, "color": 0.5, "position": 0.5, "all": 0.5}
    assert apart["seen"] == score["seen"] and apart["held_out"] == score["held_out"]
    assert score["report"]["n"] == 0


def test_the_report_set_is_every_seen_combination_no_demo_coco_val_image_shows(tmp_path,
                                                                              monkeypatch):
    # The tune set is drawn from the demo corpus's COCO val, so a report combination there
    # would have been tuned on. Captions only: image bytes are not encoded (seconds, not a
    # minute); the draws are the same, so the captions are the demo corpus's.
    from demo.attributes import COLORS, POSITIONS, SHAPES
    from infra.mirror import corpus

    monkeypatch.setattr(corpus, "encode", lambda image, fmt="JPEG": b"")
    corpus.generate(tmp_path, seed=0, size=corpus.DEMO_SIZE)
    doc = json.loads((tmp_path / "coco/annotations/captions_val2014.json").read_text())
    shown = {(w.shape, w.color, w.position)
             for w in (parse_prompt(a["caption"]) for a in doc["annotations"])}
    seen = {(s, c, p) for s in SHAPES for c in COLORS for p in POSITIONS
            if (s, c) not in HELD_OUT}
    assert REPORT_SCENES == seen - shown


def test_the_report_set_asks_for_seen_combinations_only_each_on_every_background():
    prompts = report_prompts()
    wanted = [parse_prompt(text) for text in prompts]
    assert len(prompts) == len(set(prompts)) == len(REPORT_SCENES) * len(BACKGROUNDS)
    assert {(w.shape, w.color, w.position) for w in wanted} == REPORT_SCENES
    assert {w.background for w in wanted} == set(BACKGROUNDS)
    assert not any(w.held_out for w in wanted)  # held-out pairs keep their own group
    assert len(REPORT_SCENES) >= 10  # enough combinations for a score, not a handful
    # In COCO val's words: every report prompt is one of its descriptive templates.
    assert all(any(text == t.format(c=w.color, s=w.shape, p=w.position, b=w.background)
                   for t in STYLES["describe"]) for text, w in zip(prompts, wanted))


def test_jpeg_round_trip_keeps_the_scene():
    item = Scene("circle", "green", "bottom left", "gray")
    out = io.BytesIO()
    make_image(random.Random(3), (512, 384), item).save(out, "JPEG", quality=75)
    image = center_crop_resize(Image.open(io.BytesIO(out.getvalue())).convert("RGB"), 64)
    assert classify(np.asarray(image)) == item


def test_every_demo_caption_fits_the_demo_text_length(tmp_path):
    # The demo encodes 24 tokens, not the recipe's 77: a template that grew past it would lose
    # its last words (the background) to truncation without an error anywhere.
    from transformers import CLIPTokenizer

    from demo.attributes import BACKGROUNDS, COLORS, POSITIONS, SHAPES
    from tasks.encode.tiny import save_tiny_tokenizer
    from tasks.params import load_params

    length = load_params(profile="demo").encode.text_length
    tokenizer = CLIPTokenizer.from_pretrained(save_tiny_tokenizer(tmp_path / "tok"))
    longest = 0
    for templates in STYLES.values():
        for template in templates:
            for words in ((max(COLORS, key=len), max(SHAPES, key=len), max(POSITIONS, key=len),
                           max(BACKGROUNDS, key=len)), ("red", "square", "top left", "gray")):
                text = template.format(c=words[0], s=words[1], p=words[2], b=words[3])
                longest = max(longest, len(tokenizer(text.lower()).input_ids))
    assert 15 <= longest <= length, (longest, length)
