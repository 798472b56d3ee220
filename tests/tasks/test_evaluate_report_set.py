"""The evaluate step scores the report set (prompts never tuned on) apart from the COCO-val draw
(the tune set): its own samples under its own cache key, its own group in prompt_following, and
FID on the tune set only. A tiny random checkpoint: the scores are not the point, the sets are.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import torch

from demo.attributes import REPORT_SCENES, parse_prompt, report_prompts
from tasks.common.generation import load_encoders
from tasks.common.shards import read_manifest
from tasks.evaluate import score
from tasks.evaluate.generate import iter_generated
from tests.tasks.evaluate_helpers import make_params, save_models, write_coco_shards

# Tune prompts in the demo vocabulary: 3 of seen pairs, 1 of a held-out pair.
TUNE = ["A red square in the top right corner of a white picture.",
        "A blue circle in the top left corner of a gray picture.",
        "A green triangle in the top left corner of a black picture.",
        "A blue triangle in the top right corner of a white picture."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, s3_service):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("report-set")
    models = save_models(tmp)
    params = make_params(f"test/{uuid.uuid4().hex[:12]}", models, num_samples=len(TUNE),
                         report_set=True)
    write_coco_shards(params.storage.uri(params.storage.raw_prefix, "coco"), tmp)
    return params, models


@pytest.fixture()
def demo_prompts(monkeypatch):
    # The helpers' COCO shards have no demo captions; the draw is replaced, the rest is real.
    monkeypatch.setattr(score, "cached_prompts",
                        lambda root, manifest, num, seed: (TUNE[:num], "tune-prompts"))


def test_the_report_set_is_generated_and_scored_apart_from_the_tune_set(setup, demo_prompts):
    params, models = setup
    result = score.evaluate(params, models["checkpoint"], load_encoders).result
    following = result["prompt_following"]
    assert following["report"]["n"] == len(report_prompts()) == 3 * len(REPORT_SCENES)
    assert following["seen"]["n"] == 3 and following["held_out"]["n"] == 1
    # Its own samples: every report prompt once, none of the tune set's.
    report = read_manifest(result["report_samples"].rsplit("/", 1)[0])
    prompts = [prompt for _image, prompt in iter_generated(report)]
    assert prompts == report_prompts()
    assert result["report_samples"] != result["samples"]
    assert {(w.shape, w.color, w.position) for w in map(parse_prompt, prompts)} == REPORT_SCENES
    # FID and its protocol stay on the tune set's draw.
    assert result["protocol"]["num_samples"] == len(TUNE)
    # Cached under the checkpoint and its own prompts: a second evaluation generates nothing.
    again = score.evaluate(params, models["checkpoint"], load_encoders).result
    assert again["prompt_following"] == following
    assert again["batches_generated"] == 0


def test_without_the_report_set_only_the_tune_set_is_scored(setup, demo_prompts):
    params, models = setup
    params = replace(params, evaluate=replace(params.evaluate, report_set=False))
    result = score.evaluate(params, models["checkpoint"], load_encoders).result
    assert result["prompt_following"]["report"]["n"] == 0
    assert result["report_samples"] is None
