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
    from benchmarks.demo_learning import TRAIN, chain_params, corpus_params

    corpus = corpus_params(load_params(profile="demo"), "bench/x")
    params = chain_params(corpus, steps=900, mask=0.0, prompts=48)
    (stage,) = params.train.stages
    assert stage.steps == 900 and stage.mask_ratio == 0.0 and params.train.global_batch == 64
    assert params.train.datasets == TRAIN and "sa1b" not in params.encode.datasets
    assert params.storage.latents_prefix == "bench/x/latents"
    assert params.evaluate.num_samples == 48 and params.evaluate.extra_stages == ()


def test_demo_learning_model_overrides_keep_the_text_width():
    from benchmarks.demo_learning import chain_params
    from tasks.train.loop import model_config

    params = chain_params(load_params(profile="demo"), steps=10, mask=0.0, prompts=8,
                          model={"patch_size": 1})
    cfg = model_config(params.train, params.train.stages[0])
    assert cfg.patch_size == 1 and cfg.caption_dim == 64 and cfg.input_size == 16


def test_demo_seeds_reads_assignments_as_yaml_and_rejects_bare_keys():
    import pytest

    from benchmarks.demo_seeds import assignments

    assert assignments(["weight_decay=0.0", "p_mean=-0.6", "flag=true"]) == {
        "weight_decay": 0.0, "p_mean": -0.6, "flag": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        assignments(["weight_decay"])


def test_demo_seeds_changes_only_the_seed_and_named_fields_and_keys_a_new_run(s3_service):
    import dataclasses

    import pytest

    from benchmarks.demo_seeds import seed_params
    from tasks.train.keys import stage_key

    base = load_params(profile="demo")
    same = seed_params(base, base.train.seed)
    assert same == base
    other = seed_params(base, 7, {"weight_decay": 0.05}, {"p_mean": 0.5}, last_steps=40)
    assert other.train.seed == 7 and other.train.weight_decay == 0.05
    assert [s.p_mean for s in other.train.stages] == [0.5] * len(base.train.stages)
    assert other.train.stages[-1].steps == 40
    assert other.train.stages[0].steps == base.train.stages[0].steps
    assert dataclasses.replace(other, train=base.train) == base  # nothing outside train moved
    last = base.train.stages[-1].name
    assert stage_key(other, last) != stage_key(base, last)
    with pytest.raises(ValueError):  # the stage dataclass validates a replaced value
        seed_params(base, 0, stages={"mask_ratio": 1.5})


def test_demo_seeds_only_last_trains_the_last_stage_alone_from_scratch():
    from benchmarks.demo_seeds import seed_params

    base = load_params(profile="demo")
    (stage,) = seed_params(base, 0, last_steps=50, only_last=True).train.stages
    assert stage.name == base.train.stages[-1].name and stage.loads == "none"
    assert stage.steps == 50 and stage.mask_ratio == base.train.stages[-1].mask_ratio


def test_omp_wait_sets_the_policy_only_where_asked(monkeypatch):
    from benchmarks.omp_wait import policy_environ

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in policy_environ("default")
    assert policy_environ("PASSIVE")["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_suite_runs_with_sleeping_openmp_threads():
    # tests/conftest.py sets it before torch loads: every process of the suite inherits it.
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
