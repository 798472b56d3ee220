"""Preflight: what spans steps, checked before any data moves or any GPU is paid for.

    python -m tasks check [--params F] [--profile demo|full]

Each step validates its own section when params.yaml loads; this checks that the sections agree
with each other: the stage that evaluation scores and its resolution, latent channels and
downscale against the autoencoder (AutoencoderKL or AutoencoderDC), each stage's token grid
against the patch and the mask, caption width against the text tower, what training reads against
what is downloaded and encoded, the stage chain, and each stage's estimated peak memory against
the configured GPU. Needs no GPU and no data; the encoder configs are read from their local
folders or the Hugging Face cache, or from the published values below when neither is at hand.
An encoder whose config cannot be read (the demo's on a fresh clone, before `python -m tasks
models` builds them) is not checked, and the result says so instead of a bare "ok".
The flow runs it as its first step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import MicroDiTConfig
from model.masking import kept_count
from model.memory import parameter_count, peak_gib
from model.moe import tokens_per_expert
from tasks.common.autoencoder import latent_space
from tasks.common.memory import describe, device_memory
from tasks.params import Params
from tasks.train.config import StageParams

# Published configs of the shipped profiles' hub encoders, for a preflight with no hub access
# (the fields the preflight reads; docs/autoencoders.md says where each value was confirmed):
# madebyollin/sdxl-vae-fp16-fix: AutoencoderKL, 4 latent channels, four blocks: 8x downscale;
# mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers: AutoencoderDC, 32 latent channels, six encoder
# blocks: 32x downscale, scaling factor 0.41407;
# apple/DFN5B-CLIP-ViT-H-14-378 text tower width 1024 (open_clip ViT-H-14 text_cfg.width).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "madebyollin/sdxl-vae-fp16-fix": {"_class_name": "AutoencoderKL", "latent_channels": 4,
                                      "block_out_channels": [128, 256, 512, 512],
                                      "scaling_factor": 0.13025},
    "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers": {
        "_class_name": "AutoencoderDC", "latent_channels": 32,
        "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "scaling_factor": 0.41407},
    "apple/DFN5B-CLIP-ViT-H-14-378": {"hidden_size": 1024},
}


class PreflightError(ValueError):
    """Sections of params.yaml that disagree; the message is one line per problem."""


@dataclass(frozen=True)
class StagePlan:
    name: str
    resolution: int
    micro_batch: int
    accumulation: int
    checkpointing: bool
    peak_gib: float


def model_config(params: Params, stage: StageParams) -> MicroDiTConfig:
    from tasks.train.loop import model_config as stage_config

    return stage_config(params.train, stage)


def read_config(name: str, subfolder: str | None = None) -> dict[str, Any] | None:
    """config.json of a local folder, a cached hub id, or a known published one; else None."""
    from infra.settings import REPO_ROOT

    local = Path(name) if Path(name).is_absolute() else REPO_ROOT / name
    path = local / subfolder / "config.json" if subfolder else local / "config.json"
    if path.exists():
        return json.loads(path.read_text())
    if name.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "config.json", subfolder=subfolder,
                                               local_files_only=True)).read_text())
    except Exception:  # not cached (offline preflight): fall back to the published values
        return KNOWN_CONFIGS.get(name)


def evaluated_stage(params: Params) -> StageParams:
    ev, tp = params.evaluate, params.train
    if ev.stage is None:
        return tp.stages[-1]
    names = [s.name for s in tp.stages]
    if ev.stage not in names:
        raise PreflightError(f"evaluate.stage {ev.stage!r} is not a train stage {names}")
    return tp.stage(ev.stage)


def check_evaluation(params: Params) -> list[str]:
    if not params.evaluate.enabled or not params.train.stages:
        return []
    try:
        stage = evaluated_stage(params)
    except PreflightError as err:
        return [str(err)]
    problems = []
    if params.evaluate.resolution not in (None, stage.resolution):
        problems.append(f"evaluate.resolution is {params.evaluate.resolution} px but the scored "
                        f"stage {stage.name} trains at {stage.resolution} px: set evaluate.stage, "
                        "or leave evaluate.resolution null (the stage's)")
    names = [s.name for s in params.train.stages]
    problems += [f"evaluate.extra_stages names {name!r}, not a train stage {names}"
                 for name in params.evaluate.extra_stages if name not in names]
    return problems


def check_encoders(params: Params) -> list[str]:
    problems = []
    enc, tp = params.encode, params.train
    cfg = model_config(params, tp.stages[0]) if tp.stages else None
    vae = read_config(enc.vae, enc.vae_subfolder)
    if cfg is not None and vae is not None:
        try:
            space = latent_space(vae)
        except (KeyError, ValueError) as err:
            return [f"encode.vae {enc.vae}: {err}"]
        if space.channels != cfg.latent_channels:
            problems.append(f"the VAE {enc.vae} ({space.kind}) has {space.channels} latent "
                            f"channels, the model {tp.model} {cfg.latent_channels} (set "
                            f"train.model_overrides.latent_channels: {space.channels})")
        if space.downscale != tp.latent_downscale:
            problems.append(f"train.latent_downscale is {tp.latent_downscale} but the VAE "
                            f"{enc.vae} ({space.kind}) downsamples by {space.downscale}")
    text = read_config(enc.text_encoder)
    if cfg is not None and text is not None:
        width = text.get("hidden_size") or text.get("text_config", {}).get("hidden_size")
        if width is not None and width != cfg.caption_dim:
            problems.append(f"the text tower {enc.text_encoder} gives {width}-d tokens, the "
                            f"model's caption_dim is {cfg.caption_dim}")
    return problems


def check_tokens(params: Params) -> list[str]:
    """Each stage's latent grid against the patch and the mask: the latent side a whole number
    of patches, the kept share of tokens a whole number of tokens (int() would silently keep
    fewer than mask_ratio says), and at least one token per expert."""
    problems = []
    tp = params.train
    for stage in tp.stages:
        try:
            cfg = model_config(params, stage)
        except ValueError as err:
            side = stage.resolution // tp.latent_downscale
            problems.append(f"stage {stage.name}: {stage.resolution} px / "
                            f"{tp.latent_downscale} = {side} latent px: {err}")
            continue
        tokens = cfg.num_patches
        kept = tokens * (1 - stage.mask_ratio)
        if abs(kept - round(kept)) > 1e-6:
            problems.append(f"stage {stage.name}: {tokens} tokens ({cfg.grid_size}x"
                            f"{cfg.grid_size} patches) at mask_ratio {stage.mask_ratio:g} keep "
                            f"{kept:g}, not a whole number of tokens")
        kept_tokens = kept_count(tokens, stage.mask_ratio)
        if cfg.moe_every and tokens_per_expert(kept_tokens, cfg.num_experts,
                                               cfg.expert_capacity) < 1:
            problems.append(f"stage {stage.name}: {kept_tokens} kept tokens give the "
                            f"{cfg.num_experts} experts no token each (capacity "
                            f"{cfg.expert_capacity:g})")
    return problems


def unchecked_encoders(params: Params) -> list[str]:
    """The encoders check_encoders could not read, each with why and what to do."""
    enc = params.encode
    out = []
    for what, name, subfolder in (("VAE", enc.vae, enc.vae_subfolder),
                                  ("text tower", enc.text_encoder, None)):
        if read_config(name, subfolder) is None:
            local = name.startswith((".", "/"))
            out.append(f"the {what} {name}: no config.json " + (
                "there yet (python -m tasks.models builds the demo's)" if local else
                "cached and no published values here (download it, then check again)"))
    return out


def check_data(params: Params) -> list[str]:
    problems = []
    tp, enc = params.train, params.encode
    downloaded = set(params.download.enabled())
    for stage in tp.stages:
        for dataset in tp.stage_datasets(stage):
            if dataset not in enc.datasets:
                problems.append(f"stage {stage.name} reads {dataset}, which encode.datasets "
                                "does not encode")
            elif dataset not in downloaded:
                problems.append(f"stage {stage.name} reads {dataset}, whose download is disabled")
    if params.evaluate.enabled and params.evaluate.dataset not in downloaded:
        problems.append(f"evaluate.dataset {params.evaluate.dataset} is not downloaded")
    reads_sa1b = any("sa1b" in tp.stage_datasets(s) for s in tp.stages)
    if reads_sa1b and "sa1b" in downloaded and not params.caption.enabled:
        problems.append("training reads sa1b, which ships without captions, but "
                        "caption.enabled is false")
    return problems


def check_chain(params: Params) -> list[str]:
    problems = []
    stages = params.train.stages
    if not stages:
        return ["train.stages is empty"]
    for prev, stage in zip(stages, stages[1:]):
        if stage.loads == "none":
            problems.append(f"stage {stage.name} loads nothing from {prev.name}: every stage "
                            "after the first continues the previous one (loads: full | weights)")
        if stage.loads == "full" and stage.resolution != prev.resolution:
            problems.append(f"stage {stage.name} changes resolution ({prev.resolution} -> "
                            f"{stage.resolution} px) but loads the optimizer state too: use "
                            "loads: weights")
    return problems


def stage_plans(params: Params) -> list[StagePlan]:
    tp = params.train
    count = parameter_count(model_config(params, tp.stages[0]))
    return [StagePlan(s.name, s.resolution, tp.micro_batch_of(s), tp.accumulation(s),
                      s.activation_checkpointing,
                      peak_gib(model_config(params, s), tp.micro_batch_of(s), s.mask_ratio,
                               s.activation_checkpointing, params=count))
            for s in tp.stages]


def memory_limit(params: Params, memory: list[dict[str, Any]]) -> tuple[float | None, str]:
    """The memory a stage may use per GPU and where it comes from: the smallest visible GPU's
    own memory (tasks/common/memory.py) when it is below train.gpu_memory_gib or none is set;
    host memory never stands in for it."""
    limit, source = params.train.gpu_memory_gib, "train.gpu_memory_gib"
    gpus = [m["total_gib"] for m in memory if m["device"] != "cpu"]
    if gpus and (limit is None or min(gpus) < limit):
        limit, source = min(gpus), f"{describe(memory)} (measured)"
    return limit, source


def check_memory(params: Params, plans: list[StagePlan],
                 memory: list[dict[str, Any]] | None = None) -> list[str]:
    limit, source = memory_limit(params, device_memory() if memory is None else memory)
    if limit is None:
        return []
    return [f"stage {p.name}: estimated peak {p.peak_gib:.1f} GiB per GPU exceeds "
            f"{source} {limit:g} (micro-batch {p.micro_batch}, activation "
            f"checkpointing {'on' if p.checkpointing else 'off'}): lower its micro_batch or "
            "turn on activation_checkpointing" for p in plans if p.peak_gib > limit]


def preflight(params: Params) -> dict[str, Any]:
    """Run every check; raise PreflightError listing the problems, else return the plan."""
    tokens = check_tokens(params)
    if tokens:  # a stage whose model cannot be built has no encoder or memory check to run
        raise PreflightError(f"preflight of profile {params.profile}: " + "; ".join(tokens))
    plans = stage_plans(params) if params.train.stages else []
    problems = (check_evaluation(params) + check_encoders(params) + check_data(params)
                + check_chain(params) + check_memory(params, plans))
    if problems:
        raise PreflightError(f"preflight of profile {params.profile}: " + "; ".join(problems))
    return {"profile": params.profile, "evaluated_stage": evaluated_stage(params).name,
            "extra_stages": list(params.evaluate.extra_stages),
            "stages": [p.__dict__ for p in plans], "unchecked": unchecked_encoders(params)}


def render(result: dict[str, Any], limit: float | None) -> str:
    scored = [*result["extra_stages"], result["evaluated_stage"]]
    verdict = "ok" if not result["unchecked"] else "ok as far as checked"
    lines = [f"preflight of profile {result['profile']}: {verdict} "
             f"(evaluation scores {', '.join(scored)})"]
    lines += [f"  not checked: {line}" for line in result["unchecked"]]
    for p in result["stages"]:
        lines.append(f"  {p['name']}: {p['resolution']} px, micro-batch {p['micro_batch']} x "
                     f"{p['accumulation']} accumulation, checkpointing "
                     f"{'on' if p['checkpointing'] else 'off'}, est. peak {p['peak_gib']:.1f} GiB"
                     + (f" of {limit:g}" if limit else ""))
    return "\n".join(lines)
