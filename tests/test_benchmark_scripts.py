"""The measuring scripts behind docs/benchmarks.md run end to end on small sizes."""

from __future__ import annotations

from benchmarks.s3_get import main as s3_get
from benchmarks.ustar_scan import main as ustar_scan
from infra import s3
from tasks.params import load_params


def test_ustar_scan_times_both_readers_on_the_same_samples() -> None:
    result = ustar_scan(["--samples", "20", "--repeats", "1"])
    assert result["ustar_samples_s"] > 0 and result["tarfile_samples_s"] > 0


def test_s3_get_reads_back_and_cleans_up(s3_service) -> None:
    result = s3_get(["--objects", "2", "--size-mb", "1", "--repeats", "2"])
    assert 0 < result["min_mb_s"] <= result["median_mb_s"] <= result["max_mb_s"]
    bench = load_params(profile="demo").storage.uri("bench")
    assert not [uri for uri in s3.list_uris(bench + "/") if uri.endswith(".bin")]


def test_journeydb_plan_benchmark_plans_every_row():
    from benchmarks.plan_journeydb import main as plan_journeydb

    result = plan_journeydb(["--rows", "3000", "--per-archive", "500"])
    assert result["rows"] == 3000 and result["archives"] == 6 and result["rows_per_s"] > 0


def test_demo_learning_narrows_the_demo_to_one_scored_stage_on_captioned_data():
    from benchmarks.demo_learning import TRAIN, chain_params

    params = chain_params(load_params(profile="demo"), steps=900, mask=0.0, prompts=48)
    (stage,) = params.train.stages
    assert stage.steps == 900 and stage.mask_ratio == 0.0 and params.train.global_batch == 64
    assert params.train.datasets == TRAIN and "sa1b" not in params.encode.datasets
    assert params.evaluate.num_samples == 48 and params.evaluate.extra_stages == ()


def test_demo_learning_model_overrides_keep_the_text_width():
    from benchmarks.demo_learning import chain_params
    from tasks.train.loop import model_config

    params = chain_params(load_params(profile="demo"), steps=10, mask=0.0, prompts=8,
                          model={"patch_size": 1})
    cfg = model_config(params.train, params.train.stages[0])
    assert cfg.patch_size == 1 and cfg.caption_dim == 64 and cfg.input_size == 16
