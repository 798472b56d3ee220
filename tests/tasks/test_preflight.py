"""`python -m tasks check`: each shipped profile passes; each class of disagreement between
params.yaml sections is caught before any data moves, with a one-line error."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from infra.config import to_dict
from infra.settings import REPO_ROOT
from tasks.check import PreflightError, preflight
from tasks.cli import main
from tasks.params import load_params


@pytest.mark.parametrize("profile", ["demo", "full", "full_dcae"])
def test_shipped_profiles_pass(profile, tmp_path):
    params = load_params(profile=profile)
    if profile == "demo":
        params = _with_encoders(params, tmp_path)
    result = preflight(params)
    assert [s["name"] for s in result["stages"]] == [s.name for s in params.train.stages]
    if profile != "demo":
        assert result["evaluated_stage"] == "stage4"
        assert all(s["peak_gib"] <= params.train.gpu_memory_gib for s in result["stages"])


def _with_encoders(params, tmp_path, channels=4, blocks=(32, 64, 64), width=64):
    """Encoder folders holding only a config.json: all the preflight reads of them."""
    vae, text = tmp_path / "vae", tmp_path / "text"
    vae.mkdir(exist_ok=True)
    text.mkdir(exist_ok=True)
    (vae / "config.json").write_text(json.dumps({"latent_channels": channels,
                                                 "block_out_channels": list(blocks)}))
    (text / "config.json").write_text(json.dumps({"hidden_size": width}))
    return dataclasses.replace(params, encode=dataclasses.replace(
        params.encode, vae=str(vae), text_encoder=str(text)))


def _stage(params, i, **fields):
    stages = list(params.train.stages)
    stages[i] = dataclasses.replace(stages[i], **fields)
    return dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                 stages=tuple(stages)))


def _fails(params, pattern):
    with pytest.raises(PreflightError, match=pattern) as err:
        preflight(params)
    assert "\n" not in str(err.value)


def test_evaluation_resolution_must_match_the_scored_stage(tmp_path):
    full = load_params(profile="full")
    _fails(dataclasses.replace(full, evaluate=dataclasses.replace(full.evaluate, resolution=256)),
           "evaluate.resolution is 256 px but the scored stage stage4 trains at 512")
    # Scoring stage 2 at 256 px instead is consistent.
    preflight(dataclasses.replace(full, evaluate=dataclasses.replace(
        full.evaluate, stage="stage2", resolution=256)))
    _fails(dataclasses.replace(full, evaluate=dataclasses.replace(full.evaluate, stage="s9")),
           "evaluate.stage 's9' is not a train stage")
    _fails(dataclasses.replace(full, evaluate=dataclasses.replace(full.evaluate,
                                                                  extra_stages=("s7",))),
           "evaluate.extra_stages names 's7', not a train stage")


def test_score_plan_scores_each_stage_at_its_resolution():
    from tasks.evaluate.step import combine, score_plan

    full = load_params(profile="full")
    both = dataclasses.replace(full, evaluate=dataclasses.replace(full.evaluate,
                                                                  extra_stages=("stage2",)))
    plan = score_plan(both)
    assert [name for name, _ in plan] == ["stage2", "stage4"]
    assert [(p.evaluate.stage, p.evaluate.resolution) for _, p in plan] == \
        [("stage2", 256), ("stage4", 512)]
    preflight(both)
    results = {n: {"checkpoint": n, "fid": f, "protocol": {"resolution": r}}
               for n, f, r in (("stage2", 30.0, 256), ("stage4", 20.0, 512))}
    combined = combine(results, "stage4")
    assert combined["fid"] == 20.0 and combined["stage"] == "stage4"
    assert combined["by_stage"]["stage2"]["fid"] == 30.0
    assert combined["by_stage"]["stage2"]["resolution"] == 256


def test_latent_channels_and_downscale_must_match_the_vae(tmp_path):
    demo = load_params(profile="demo")
    _fails(_with_encoders(demo, tmp_path, channels=16), "16 latent channels, the model tiny 4")
    _fails(_with_encoders(demo, tmp_path, blocks=(32, 64, 64, 64)),
           "latent_downscale is 4 but the VAE .* downsamples by 8")


def _dcae(params, tmp_path, blocks=(128, 256, 512, 512, 1024, 1024), channels=32):
    """params reading an AutoencoderDC folder that holds only its config.json."""
    vae = tmp_path / "dcae"
    vae.mkdir(exist_ok=True)
    (vae / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderDC", "latent_channels": channels,
        "encoder_block_out_channels": list(blocks), "scaling_factor": 0.41407}))
    return dataclasses.replace(params, encode=dataclasses.replace(params.encode, vae=str(vae)))


def test_dcae_channels_and_downscale_must_match_the_model(tmp_path):
    dcae = load_params(profile="full_dcae")
    preflight(_dcae(dcae, tmp_path))
    _fails(_dcae(dcae, tmp_path, channels=128),
           r"\(AutoencoderDC\) has 128 latent channels, the model XL_2 32 \(set "
           r"train.model_overrides.latent_channels: 128\)")
    _fails(_dcae(dcae, tmp_path, blocks=(128, 256, 512, 512, 1024, 1024, 1024)),
           r"latent_downscale is 32 but the VAE .* \(AutoencoderDC\) downsamples by 64")
    # The full profile's 4-channel model on DC-AE latents.
    _fails(_dcae(load_params(profile="full"), tmp_path), "has 32 latent channels, the model XL_2 4")


def test_token_grid_must_divide_by_the_patch_and_the_mask():
    dcae = load_params(profile="full_dcae")
    # 288 px / 32 = 9 latent px: a whole grid at patch 1, but 81 tokens x 0.25 is not whole.
    nine = _stage(_stage(dcae, 0, resolution=288), 1, resolution=288)
    _fails(nine, r"stage stage1: 81 tokens \(9x9 patches\) at mask_ratio 0.75 keep 20.25, not "
                 "a whole number of tokens")
    # At patch size 2 the 9x9 latent is not a whole number of patches.
    patch2 = dataclasses.replace(nine, train=dataclasses.replace(
        nine.train, model_overrides={"latent_channels": 32, "patch_size": 2}))
    _fails(patch2, r"stage stage1: 288 px / 32 = 9 latent px: input_size 9 is not a multiple "
                   "of patch_size 2")


def test_caption_width_must_match_the_text_tower(tmp_path):
    _fails(_with_encoders(load_params(profile="demo"), tmp_path, width=1024),
           "gives 1024-d tokens, the model's caption_dim is 64")


def test_training_reads_only_what_is_downloaded_and_encoded(tmp_path):
    demo = _with_encoders(load_params(profile="demo"), tmp_path)
    no_encode = dataclasses.replace(demo, encode=dataclasses.replace(
        demo.encode, datasets=("cc3m", "coco")))
    _fails(no_encode, "stage stage1 reads sa1b, which encode.datasets does not encode")
    # Encode writes the resolutions the stages declare (no list of its own to disagree).
    from tasks.encode.run import resolution_plan

    moved = _stage(demo, 1, resolution=128, loads="weights")
    assert 128 in resolution_plan(moved, "cc3m") and 128 not in resolution_plan(demo, "cc3m")
    no_caption = dataclasses.replace(demo, caption=dataclasses.replace(demo.caption,
                                                                       enabled=False))
    _fails(no_caption, "training reads sa1b, which ships without captions")


def test_stage_chain(tmp_path):
    demo = _with_encoders(load_params(profile="demo"), tmp_path)
    _fails(_stage(demo, 1, loads="none"), "stage stage2 loads nothing from stage1")
    full = load_params(profile="full")
    _fails(_stage(full, 2, loads="full"), "stage stage3 changes resolution .* loads the optimizer")


def test_stage_that_does_not_fit_the_gpu_is_refused():
    full = load_params(profile="full")
    _fails(_stage(full, 3, activation_checkpointing=False),
           r"stage stage4: estimated peak 295\.0 GiB per GPU exceeds train.gpu_memory_gib 79")


def test_cli_prints_one_line_for_a_batch_that_does_not_divide(tmp_path, capsys):
    full = load_params(profile="full")
    block = {k: v for k, v in to_dict(full).items() if k != "profile"}
    block["train"]["stages"][1]["micro_batch"] = 96
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"profile": "full", "full": block}))
    assert main(["check", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "global_batch 2048 must be a multiple of micro_batch x GPUs = 96 x 8" in err
    assert "\n" not in err
    block["train"]["stages"][1]["micro_batch"] = 64
    path.write_text(yaml.safe_dump({"profile": "full", "full": {**block, "evaluate": {
        **block["evaluate"], "resolution": 256}}}))
    assert main(["check", "--params", str(path)]) == 2
    assert "evaluate.resolution is 256 px" in capsys.readouterr().err


def test_check_on_a_fresh_clone_says_which_encoders_it_could_not_read(tmp_path, capsys):
    path = tmp_path / "fresh.yaml"
    # The demo as on a fresh clone: its encoder folders are not built yet.
    path.write_text(yaml.safe_dump({
        "extends": str(REPO_ROOT / "params.yaml"), "profile": "demo",
        "overrides": {"encode": {"vae": str(tmp_path / "no-vae"),
                                 "text_encoder": str(tmp_path / "no-text")}}}))
    assert main(["check", "--params", str(path)]) == 0
    out = capsys.readouterr().out
    assert "demo: ok as far as checked" in out and "demo: ok (" not in out
    assert f"not checked: the VAE {tmp_path / 'no-vae'}: no config.json" in out
    assert f"not checked: the text tower {tmp_path / 'no-text'}" in out
    # With both configs at hand, a plain ok and nothing left unchecked.
    checked = _with_encoders(load_params(path), tmp_path)
    assert preflight(checked)["unchecked"] == []
    assert preflight(load_params(path))["unchecked"] != []
