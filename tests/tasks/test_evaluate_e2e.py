"""End to end on CPU: tiny checkpoint + the encode step's tiny VAE/text tower + COCO shards in S3.

Covers the real loading code (from_pretrained on folders saved here, through params.encode), the
S3 caches (real statistics, prompts, generated batches), resumption after a lost batch, and CLIP
score.
"""

from __future__ import annotations

import io
import math
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from infra import s3
from tasks.common.generation import load_encoders
from tasks.common.generation import check_compatible, fetch_checkpoint, load_ema_model
from tasks.common.grid import LABELLED_MIN_PX
from tasks.common.shards import done_records
from tasks.evaluate.score import evaluate
from tests.tasks.evaluate_helpers import (NUM_REAL, RESOLUTION, make_params, save_models,
                                          save_tiny_clip, write_coco_shards)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, s3_service):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("evaluate")
    models = save_models(tmp)
    params = make_params(f"test/{uuid.uuid4().hex[:12]}", models)
    write_coco_shards(params.storage.uri(params.storage.raw_prefix, "coco"), tmp)
    return params, models


@pytest.fixture(scope="module")
def first(setup):
    params, models = setup
    return evaluate(params, models["checkpoint"], load_encoders)


def test_evaluates_a_checkpoint_end_to_end(first):
    result = first.result
    assert result["fid"] > 0 and result["clip_score"] is None
    assert result["batches_generated"] == 2  # 8 samples in batches of 4
    assert result["real_skipped"]["corrupt_image"] == 1
    protocol = result["protocol"]
    assert protocol["num_samples"] == 8 and protocol["num_real"] == NUM_REAL
    assert protocol["weights"] == "ema" and protocol["steps"] == 2
    assert protocol["feature_network"].startswith("default_1.pt:sha256:")
    grid = Image.open(io.BytesIO(first.grid_png))
    scale = math.ceil(LABELLED_MIN_PX / RESOLUTION)  # labelled tiles are enlarged
    assert grid.size[0] == 2 * RESOLUTION * scale + 3 * 2  # 4 samples, 2x2, 2 px padding
    assert grid.size[1] > grid.size[0]  # each tile's prompt written under it
    assert s3.exists(result["real_stats"])
    assert result["generation"]["checkpoint"] == result["checkpoint_digest"]


def test_rerun_regenerates_only_a_lost_batch(setup, first):
    params, models = setup
    # Lose the second batch as a crash before its commit would: no record, no shard.
    samples_prefix = first.result["samples"].rsplit("/", 1)[0]
    record = done_records(samples_prefix)["batch-000001"]
    s3.delete(s3.join(samples_prefix, "_done", "batch-000001.json"))
    s3.delete(record.uri)
    resumed = evaluate(params, models["checkpoint"], load_encoders).result
    assert resumed["batches_generated"] == 1  # the committed batch is reused
    # Per-sample seeds: the regenerated batch is the same images, so the same FID.
    assert resumed["fid"] == pytest.approx(first.result["fid"], rel=1e-6)


def test_mismatched_resolution_fails_early_with_the_fix(setup):
    params, models = setup
    encoders = load_encoders(params, torch.device("cpu"))
    checkpoint = fetch_checkpoint(models["checkpoint"], Path(models["checkpoint"]))
    precond = load_ema_model(checkpoint, torch.device("cpu"))
    check_compatible(precond, encoders.vae, encoders.encode_text, RESOLUTION)
    with pytest.raises(ValueError, match=f"set evaluate.resolution to {RESOLUTION}"):
        check_compatible(precond, encoders.vae, encoders.encode_text, 2 * RESOLUTION)


def test_clip_score_when_a_clip_model_is_configured(setup, first, tmp_path):
    params, models = setup
    clip = save_tiny_clip(tmp_path, models["text"])
    with_clip = replace(params, evaluate=replace(params.evaluate, clip_model=clip))
    result = evaluate(with_clip, models["checkpoint"], load_encoders).result
    assert result["batches_generated"] == 0  # CLIP score reuses the cached samples
    assert 0.0 <= result["clip_score"] <= 100.0
    assert result["protocol"]["clip_model"] == clip
    assert result["fid"] == pytest.approx(first.result["fid"], rel=1e-6)
