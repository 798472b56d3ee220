"""The bill before paying it: projected device-hours and dollars per step and per stage.

    python -m tasks plan [--params F] [--profile demo|full|VARIANT] [--compare PROFILE]

Each line states where its figure comes from: a rate measured on the planned card by the GPU
suite (the newest docs/gpu/*.json whose card names `cost.gpu_type`), else a given throughput
from `cost.throughput` (images, or captions, per second per device), else model FLOPs at
`cost.mfu` of the device's dense peak (`cost.peak_tflops`). The caption step is priced for each
caption source side by side; the total holds the one `caption.source` names. Dataset sizes
before the first download are the sources' published sizes (DATASET_IMAGES) times the
configured fraction. `--compare` prints a second profile's training stages beside the first's
(render_compare): for an autoencoder choice (full beside full_dcae), the latent, the tokens per
image and the FLOPs they cost, with the rate each line assumes. The flow refuses to start a run
whose plan exceeds `cost.budget_usd` unless told to go over it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.settings import REPO_ROOT
from model.flops import forward_flops
from tasks.params import Params

# Published sizes of each source (images before our filters), for plans made before a download.
DATASET_IMAGES: dict[str, int] = {
    "cc3m": 3_318_333,  # Conceptual Captions training TSV rows
    "sa1b": 11_000_000,  # SA-1B: about 11M images in ~1,000 tars
    "textcaps": 21_953,  # TextCaps 0.1 train images
    "journeydb": 4_189_737,  # JourneyDB train split
    "diffusiondb": 14_000_000,  # DiffusionDB Large (the 2M variant: 2,000,000)
    "coco": 40_504,  # COCO-2014 val
}
CAPTION_TOKENS = 77  # text tokens per caption, for the FLOP count of a forward pass
# Captions each published caption file holds, for a plan made before the file is read:
# PixArt-alpha/SAM-LLaVA-Captions10M, by its name (not counted by us).
CAPTION_FILE_IMAGES: dict[str, int] = {"sa1b": 10_000_000}
CAPTION_SOURCES = ("llava", "file", "file+llava")
GPU_RESULTS = REPO_ROOT / "docs" / "gpu"  # benchmarks/gpu_suite.sh results, one JSON per run


class OverBudget(RuntimeError):
    """The plan costs more than cost.budget_usd; the message holds the plan."""


@dataclass(frozen=True)
class PlanLine:
    step: str
    item: str  # the stage or dataset the line covers
    work: float  # images (or captions) to process
    rate: float  # per second per device
    devices: int
    device_hours: float
    cost_usd: float
    basis: str  # where the rate comes from


def _line(params: Params, step: str, item: str, work: float, rate: float, devices: int,
          basis: str) -> PlanLine:
    hours = work / rate / 3600.0 if rate else 0.0  # device-hours: shared by `devices`
    return PlanLine(step, item, work, rate, devices, hours, hours * params.cost.rate, basis)


def flops_rate(params: Params, flops_per_item: float) -> tuple[float, str]:
    """Items per second per device at the assumed MFU, and how that was derived; a rate of 0
    (not projected) when the device's peak is not in cost.peak_tflops."""
    cost = params.cost
    peak = cost.peak_tflops.get(cost.gpu_type)
    if peak is None:
        return 0.0, (f"not projected: no cost.peak_tflops.{cost.gpu_type} (dense peak) and no "
                     "cost.throughput given")
    rate = peak * 1e12 * cost.mfu / flops_per_item
    return rate, (f"model FLOPs ({flops_per_item / 1e9:.1f} GFLOP each) at MFU {cost.mfu:g} of "
                  f"{peak:g} TFLOP/s")


def suite_rates(result: dict[str, Any]) -> dict[str, float]:
    """Our rates in one GPU suite result (benchmarks/gpu_suite_merge.py), by plan key: the
    masked 256 px step is stage 1's, the unmasked one stage 2's."""
    cases = result.get("train", {}).get("cases", {})
    encode = result.get("encode", {}).get("images_per_s", {})
    rates = {"stage1": cases.get("ours-m75", {}).get("images_per_s"),
             "stage2": cases.get("ours-m0", {}).get("images_per_s"),
             "encode": next((v for k, v in encode.items() if k.startswith("ours")), None),
             "caption": result.get("caption", {}).get("captions_per_s", {}).get("ours")}
    return {k: float(v) for k, v in rates.items() if v}


@functools.lru_cache(maxsize=8)
def gpu_measured(gpu_type: str, folder: Path = GPU_RESULTS) -> dict[str, tuple[float, str]]:
    """Rates measured on a card whose name holds gpu_type (e.g. H100 in "NVIDIA H100 80GB
    HBM3"), the newest suite result first; {} when no result there names that card."""
    out: dict[str, tuple[float, str]] = {}
    results = [(json.loads(path.read_text()), path) for path in sorted(folder.glob("*.json"))]
    for result, path in sorted(results, key=lambda r: str(r[0].get("date", "")), reverse=True):
        card = str(result.get("env", {}).get("gpu", ""))
        if gpu_type.lower() not in card.lower().split():
            continue
        for key, rate in suite_rates(result).items():
            out.setdefault(key, (rate, f"measured {rate:g}/s on {card} "
                                       f"({path.relative_to(REPO_ROOT)})"))
    return out


def measured(params: Params, key: str) -> tuple[float, str] | None:
    """A rate measured on the planned card, else the one given in cost.throughput, else None."""
    found = gpu_measured(params.cost.gpu_type).get(key)
    if found:
        return found
    rate = params.cost.throughput.get(key)
    return (rate, f"given {rate:g}/s per device (cost.throughput.{key})") if rate else None


def train_lines(params: Params) -> list[PlanLine]:
    from tasks.train.loop import model_config

    tp = params.train
    lines = []
    for stage in tp.stages:
        images = stage.steps * tp.global_batch
        # A training step is a forward and a backward pass: about 3x the forward FLOPs.
        flops = 3 * forward_flops(model_config(tp, stage), stage.mask_ratio, CAPTION_TOKENS)
        rate, basis = measured(params, stage.name) or flops_rate(params, flops)
        lines.append(_line(params, "train", stage.name, images, rate, tp.world, basis))
    return lines


def mirror_images(dataset: str) -> int:
    """Images the local mirror service generates for a dataset (the demo's sources)."""
    from infra.mirror.corpus import DEMO_SIZE

    size = DEMO_SIZE
    return {"cc3m": size.cc3m, "sa1b": size.sa1b_archives * size.sa1b_per_archive,
            "textcaps": size.textcaps,
            "journeydb": size.journeydb_archives * size.journeydb_per_archive,
            "diffusiondb": size.diffusiondb_parts * size.diffusiondb_per_part,
            "coco": size.coco}[dataset]


def source_images(params: Params, dataset: str) -> float:
    source = params.download.source(dataset)
    from_mirror = any("{mirror}" in str(v) for v in vars(source).values())
    published = mirror_images(dataset) if from_mirror else DATASET_IMAGES[dataset]
    images = published * source.fraction
    return min(images, source.max_samples) if source.max_samples else images


def caption_lines(params: Params, source: str) -> list[PlanLine]:
    """The caption step's lines if `caption.source` were this source: `file` reads captions on
    the cpu pool (no device time); `file+llava` captions only the images the file lacks."""
    rate = measured(params, "caption")
    lines = []
    for dataset in params.caption.datasets if params.caption.enabled else ():
        if dataset not in params.download.enabled():
            continue
        images = source_images(params, dataset)
        if source == "file":
            lines.append(PlanLine("caption", dataset, images, 0, 1, 0.0, 0.0,
                                  "published caption file: read on the cpu pool, no device"))
            continue
        note = ""
        if source == "file+llava":
            held = CAPTION_FILE_IMAGES.get(dataset, 0)
            share = 1.0 - min(1.0, held / DATASET_IMAGES[dataset])
            images *= share
            note = (f"; LLaVA for the {share:.1%} of images the file lacks (est.: {held:,} "
                    f"captions of {DATASET_IMAGES[dataset]:,} images)")
        if rate is None:
            lines.append(PlanLine("caption", dataset, images, 0, 1, 0.0, 0.0,
                                  "not projected: no caption rate measured or given" + note))
        else:
            lines.append(_line(params, "caption", dataset, images, rate[0], 1, rate[1] + note))
    return lines


def data_lines(params: Params) -> list[PlanLine]:
    from tasks.encode.run import encoded_datasets

    lines = caption_lines(params, params.caption.source)
    encode_rate = measured(params, "encode")
    for dataset in encoded_datasets(params):
        if dataset not in params.download.enabled():
            continue
        images = source_images(params, dataset)
        if encode_rate is None:
            lines.append(PlanLine("encode", dataset, images, 0, 1, 0.0, 0.0,
                                  "not projected: no encode rate measured or given"))
        else:
            lines.append(_line(params, "encode", dataset, images, encode_rate[0], 1,
                               encode_rate[1]))
    return lines


def evaluate_lines(params: Params) -> list[PlanLine]:
    from tasks.evaluate.step import score_plan
    from tasks.train.loop import model_config

    if not params.evaluate.enabled:
        return []
    lines = []
    for name, scored in score_plan(params):
        ev = scored.evaluate
        stage = params.train.stage(name)
        # Heun: two network calls per step; guidance doubles each call (cond + uncond).
        calls = 2 * ev.steps * (2 if ev.guidance > 1.0 else 1)
        flops = calls * forward_flops(model_config(params.train, stage), 0.0, CAPTION_TOKENS)
        rate, basis = measured(params, f"evaluate.{name}") or flops_rate(params, flops)
        lines.append(_line(params, "evaluate", name, ev.num_samples, rate, 1,
                           basis + " (generation only)"))
    return lines


def plan(params: Params) -> list[PlanLine]:
    return data_lines(params) + train_lines(params) + evaluate_lines(params)


def totals(lines: list[PlanLine]) -> dict[str, float]:
    return {"device_hours": sum(p.device_hours for p in lines),
            "cost_usd": sum(p.cost_usd for p in lines)}


def by_step(lines: list[PlanLine]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in lines:
        row = out.setdefault(line.step, {"device_hours": 0.0, "cost_usd": 0.0})
        row["device_hours"] += line.device_hours
        row["cost_usd"] += line.cost_usd
    return out


def render(params: Params, lines: list[PlanLine]) -> str:
    cost = params.cost
    out = [f"plan of profile {params.profile} ({cost.gpu_type} at "
           f"${cost.rate:g}/device-hour)",
           f"{'step':<9} {'item':<12} {'work':>14} {'rate/s':>9} {'devices':>7} "
           f"{'dev-hours':>10} {'USD':>10}  basis"]
    for p in lines:
        rate = f"{p.rate:9.1f}" if p.rate else f"{'-':>9}"
        out.append(f"{p.step:<9} {p.item:<12} {p.work:>14,.0f} {rate} {p.devices:>7} "
                   f"{p.device_hours:>10.4f} {p.cost_usd:>10.4f}  {p.basis}")
    steps = by_step(lines)
    for name, members in SUBTOTALS.items():
        part = [steps.get(step, {"device_hours": 0.0, "cost_usd": 0.0}) for step in members]
        out.append(f"{'subtotal':<9} {name:<37} {sum(p['device_hours'] for p in part):>10.4f} "
                   f"{sum(p['cost_usd'] for p in part):>10.4f}  {' + '.join(members)}")
    total = totals(lines)
    budget = f" of a ${cost.budget_usd:,.2f} budget" if cost.budget_usd else ""
    out.append(f"{'total':<9} {'':<12} {'':>14} {'':>9} {'':>7} {total['device_hours']:>10.4f} "
               f"{total['cost_usd']:>10.4f}{budget}")
    out += render_caption_sources(params)
    out += render_spot(params, lines)
    return "\n".join(out)


def checkpoint_interval_h(params: Params, line: PlanLine) -> float:
    """Hours of a training stage between checkpoints: the image interval at the planned rate,
    or train.checkpoint_every_min when that comes sooner."""
    tp = params.train
    hours = [tp.checkpoint_every_images / (line.rate * line.devices) / 3600.0] if line.rate \
        else []
    hours += [tp.checkpoint_every_min / 60.0] if tp.checkpoint_every_min > 0 else []
    return min(hours, default=0.0)


def spot(params: Params, lines: list[PlanLine]) -> dict[str, Any]:
    """The plan on-demand and on spot. Every device-hour is charged at its class's rate; on spot
    the training stages also redo the work preemptions take away: cost.spot_preemptions_per_hour
    per node-hour, each losing on average half a checkpoint interval plus cost.restart_s, on
    every device of the stage (first order: the redone work's own preemptions are left out)."""
    from tasks.common.cost import expected_preemption_loss

    cost = params.cost
    hours = totals(lines)["device_hours"]
    stages = []
    for line in (p for p in lines if p.step == "train"):
        wall_h = line.device_hours / line.devices
        every_h = checkpoint_interval_h(params, line)
        loss = expected_preemption_loss(cost, wall_h * params.train.nodes, every_h)
        stages.append({"stage": line.item, "checkpoint_every_h": every_h,
                       "preemptions": loss["preemptions"],
                       "lost_device_hours": loss["lost_hours"] * line.devices
                       / params.train.nodes})
    lost = sum(s["lost_device_hours"] for s in stages)
    spot_rate = cost.rate_of(cost.gpu_type, "spot")
    return {"on_demand_usd": hours * cost.rate_of(cost.gpu_type, "on_demand"),
            "spot_usd": (hours + lost) * spot_rate, "spot_rate": spot_rate,
            "lost_device_hours": lost, "lost_usd": lost * spot_rate, "stages": stages}


def render_spot(params: Params, lines: list[PlanLine]) -> list[str]:
    cost = params.cost
    if cost.gpu_type not in cost.spot_usd_per_gpu_hour:
        return []
    s = spot(params, lines)
    out = [f"price classes (the total holds cost.price_class: {cost.price_class}):",
           f"  on-demand at ${cost.rate_of(cost.gpu_type):g}/device-hour: "
           f"{s['on_demand_usd']:,.4f} USD",
           f"  spot at ${s['spot_rate']:g}/device-hour, {cost.spot_preemptions_per_hour:g} "
           f"preemptions per node-hour: {s['spot_usd']:,.4f} USD, of which "
           f"{s['lost_usd']:,.4f} USD ({s['lost_device_hours']:,.4f} device-hours) redo lost work"]
    for st in s["stages"]:
        out.append(f"    {st['stage']}: a checkpoint every {st['checkpoint_every_h'] * 60:.1f} "
                   f"min, {st['preemptions']:.2f} preemptions expected, each losing "
                   f"{st['checkpoint_every_h'] * 30:.1f} min + {cost.restart_s:g} s restart: "
                   f"{st['lost_device_hours']:,.4f} device-hours")
    return out


SUBTOTALS = {"data preparation": ("caption", "encode"), "training": ("train",)}


def render_caption_sources(params: Params) -> list[str]:
    """The caption step under each source, side by side; the total holds caption.source's."""
    if not params.caption.enabled:
        return []
    out = [f"caption sources (the total holds caption.source: {params.caption.source}):"]
    for source in CAPTION_SOURCES:
        part = caption_lines(params, source)
        llava = 0.0 if source == "file" else sum(p.work for p in part)
        mark = "*" if source == params.caption.source else " "
        out.append(f"{mark} {source:<11} {llava:>14,.0f} images through LLaVA "
                   f"{sum(p.device_hours for p in part):>10.4f} dev-hours "
                   f"{sum(p.cost_usd for p in part):>10.4f} USD")
    return out


@dataclass(frozen=True)
class StageTokens:
    """What one training stage puts through the DiT per image, by the FLOP model's count."""

    stage: str
    resolution: int  # px
    latent: tuple[int, int, int]  # (C, h, w) latent per image
    tokens: int  # patches per image, T
    kept: int  # tokens past the mask into the backbone
    train_gflop: float  # forward + backward, per image


def stage_tokens(params: Params) -> list[StageTokens]:
    from model.masking import kept_count
    from tasks.train.loop import model_config

    out = []
    for stage in params.train.stages:
        cfg = model_config(params.train, stage)
        kept = kept_count(cfg.num_patches, stage.mask_ratio) if stage.mask_ratio else \
            cfg.num_patches
        flops = 3 * forward_flops(cfg, stage.mask_ratio, CAPTION_TOKENS)
        out.append(StageTokens(stage.name, stage.resolution,
                               (cfg.latent_channels, cfg.input_size, cfg.input_size),
                               cfg.num_patches, kept, flops / 1e9))
    return out


def render_compare(left: Params, right: Params) -> str:
    """Two profiles' plans side by side, stage by stage: the latent each autoencoder gives, the
    tokens and FLOPs per image, the device-hours and dollars, and the rate each line assumes
    (where it comes from: measured, given in cost.throughput, or FLOPs at an MFU)."""
    plans = {p.profile: {(line.step, line.item): line for line in plan(p)} for p in (left, right)}
    tokens = {p.profile: {t.stage: t for t in stage_tokens(p)} for p in (left, right)}
    a, b = left.profile, right.profile
    out = [f"plan of {a} beside {b} (device-hours and USD at each profile's own price)",
           f"  encode.vae: {a}: {left.encode.vae}; {b}: {right.encode.vae}",
           f"{'stage':<8} {'profile':<10} {'latent':>9} {'tokens':>7} {'kept':>5} "
           f"{'GFLOP/img':>10} {'rate/s':>8} {'dev-hours':>10} {'USD':>10}"]
    stages = [s.name for s in left.train.stages]
    stages += [s.name for s in right.train.stages if s.name not in stages]
    for name in stages:
        for profile in (a, b):
            t, line = tokens[profile].get(name), plans[profile].get(("train", name))
            if t is None or line is None:
                out.append(f"{name:<8} {profile:<10} {'(no such stage)':>9}")
                continue
            latent = "x".join(str(v) for v in t.latent)
            out.append(f"{name:<8} {profile:<10} {latent:>9} {t.tokens:>7} {t.kept:>5} "
                       f"{t.train_gflop:>10.1f} {line.rate:>8.1f} {line.device_hours:>10.1f} "
                       f"{line.cost_usd:>10,.0f}")
    # None: every line of the plan.
    for label, steps in (("training", ("train",)), ("data preparation", ("caption", "encode")),
                         ("evaluation", ("evaluate",)), ("total", None)):
        cells = []
        for profile in (a, b):
            part = [line for line in plans[profile].values()
                    if steps is None or line.step in steps]
            unpriced = sorted({p.step for p in part if p.work and not p.rate})
            cells.append(f"{profile} {sum(p.device_hours for p in part):,.1f} dev-h "
                         f"${sum(p.cost_usd for p in part):,.0f}"
                         + (f" ({', '.join(unpriced)} not projected)" if unpriced else ""))
        out.append(f"{label + ':':<18} " + "  |  ".join(cells))
    out.append("rates assumed (per device):")
    for profile in (a, b):
        for (step, item), line in plans[profile].items():
            if step in ("train", "encode") and (step == "train" or item == "cc3m"):
                what = item if step == "train" else "encode (each dataset)"
                out.append(f"  {profile} {what}: {line.basis}")
    return "\n".join(out)


def check_budget(params: Params, allow_over_budget: bool = False) -> dict[str, Any]:
    """The plan as a dict; raises OverBudget (with the plan) when it exceeds the budget."""
    lines = plan(params)
    total = totals(lines)
    budget = params.cost.budget_usd
    if budget is not None and total["cost_usd"] > budget and not allow_over_budget:
        raise OverBudget(f"the plan costs ${total['cost_usd']:,.2f}, over cost.budget_usd "
                         f"${budget:,.2f}; raise the budget or run with allow_over_budget\n"
                         + render(params, lines))
    return {"lines": [asdict(p) for p in lines], "by_step": by_step(lines),
            "spot": spot(params, lines), **total}
