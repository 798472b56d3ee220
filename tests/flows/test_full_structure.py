"""The full profile's structure through `micro-budget/full`: six steps, four stages on two
ranks, 512 px stand-in stages behind the native-size filter, evaluation of the final stage.

tests/params/full_structure.yaml extends params.yaml's full block and overrides only what this
machine cannot run (model sizes, sources, device counts, steps, sample counts), so every change
to the full profile is exercised here."""

from __future__ import annotations

from prefect.deployments import run_deployment

from flows.deploy import deploy
from infra import s3
from infra.settings import REPO_ROOT
from tasks.common.shards import iter_shard, read_manifest
from tasks.params import load_params
from tasks.train import checkpoint, keys

PARAMS = REPO_ROOT / "tests" / "params" / "full_structure.yaml"


def _clear(params) -> None:
    for prefix in (params.storage.raw_prefix, params.storage.latents_prefix,
                   params.storage.runs_prefix):
        for uri in list(s3.list_uris(params.storage.uri(prefix) + "/")):
            s3.delete(uri)


def test_full_profile_structure_runs_through_the_flow(pipeline_services):
    params = load_params(PARAMS)
    full = load_params(profile="full")
    # Only the overridable fields differ from the full profile.
    for ours, theirs in zip(params.train.stages, full.train.stages):
        for name in ("name", "mask_ratio", "lr", "schedule", "loads", "datasets",
                     "min_short_side", "p_mean", "p_std", "activation_checkpointing"):
            assert getattr(ours, name) == getattr(theirs, name), name
    assert params.evaluate.stage == full.evaluate.stage == "stage4"
    _clear(params)
    deploy()
    run = run_deployment("micro-budget/full", timeout=1500,
                         parameters={"params_path": str(PARAMS)})
    assert run.state is not None and run.state.is_completed(), run.state

    folder = params.storage.uri(params.storage.pipeline_prefix, str(run.id))
    envelopes = {step: s3.get_json(f"{folder}/{step}.json")["result"]
                 for step in ("download", "caption", "encode", "train", "evaluate")}
    assert set(envelopes["download"]) == {"coco", "cc3m", "sa1b", "textcaps", "journeydb",
                                          "diffusiondb"}
    assert envelopes["caption"]["sa1b"]["captioned"] > 0

    # Encode: each dataset only at the resolutions its stages read; COCO not at all.
    assert envelopes["encode"]["coco"].get("skipped_dataset")
    for dataset, wanted in (("diffusiondb", {"lat32.npy"}), ("cc3m", {"lat32.npy", "lat64.npy"})):
        manifest = read_manifest(params.storage.uri(params.storage.latents_prefix, dataset))
        fields = set()
        for shard in manifest.shards:
            for _, sample in iter_shard(shard.uri):
                fields |= {k for k in sample if k.startswith("lat")}
                if "lat64.npy" in sample:
                    import json

                    assert json.loads(sample["json"])["native_short_side"] >= 512
        assert fields == wanted, dataset

    # Train: four stages, two ranks each, the file's run name on every checkpoint (the params
    # file reached the worker and the torchrun children), the 512 px stand-ins filtered.
    stages = envelopes["train"]["stages"]
    assert list(stages) == ["stage1", "stage2", "stage3", "stage4"]
    seeds = set()
    for spec in params.train.stages:
        stage = stages[spec.name]
        assert stage["gpus"] == 2 and stage["steps"] == spec.steps
        assert stage["micro_batch"] == params.train.micro_batch_of(spec)
        assert f"/structure/runs/structure-run/{spec.name}-" in stage["checkpoint"]
        pointer = checkpoint.latest(keys.stage_prefix(params, spec.name))
        assert pointer is not None and pointer.uri == stage["checkpoint"]
        seeds.add(stage["seed"])
        if spec.min_short_side:
            assert stage["below_min_short_side"] > 0
    assert len(seeds) == 4  # each stage its own data order
    # The finished run as a diffusers pipeline next to the last stage's checkpoint.
    assert envelopes["train"]["diffusers"] == stages["stage4"]["checkpoint"] + "/diffusers"
    assert s3.exists(envelopes["train"]["diffusers"] + "/model_index.json")

    # Evaluation scored the final stage at its resolution.
    evaluation = envelopes["evaluate"]
    assert evaluation["fid"] > 0 and evaluation["protocol"]["resolution"] == 64
    assert "/stage4-" in evaluation["checkpoint"] and evaluation["stage"] == "stage4"
    by_stage = evaluation["by_stage"]
    assert set(by_stage) == {"stage2", "stage4"}
    assert by_stage["stage2"]["resolution"] == 32 and by_stage["stage2"]["fid"] > 0
    assert by_stage["stage2"]["checkpoint"] == stages["stage2"]["checkpoint"]
    assert by_stage["stage4"]["checkpoint"] == stages["stage4"]["checkpoint"]
