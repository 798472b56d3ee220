"""One evaluation of one checkpoint, as plain functions: real side, generated side, FID, CLIP.

Caches (all resumable, all keyed by what determines their content):
    s3://BUCKET/<raw>/<dataset>/_fid/real_stats/<hash>.*   real Inception statistics of the
                                                           images in <raw>/<dataset>-original/
    s3://BUCKET/<raw>/<dataset>/_fid/prompts/<hash>.json   the drawn captions
    s3://BUCKET/<runs>/_eval/samples/<ckpt>/<hash>/        generated PNG shards + manifest
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchmetrics

from demo.attributes import prompt_following, report_prompts
from infra import s3
from tasks.common.device import pick_device
from tasks.common.errors import OperationalError
from tasks.common.generation import (Checkpoint, Encoders, check_compatible, fetch_checkpoint,
                                     load_ema_model)
from tasks.common.grid import grid_png
from tasks.common.shards import Manifest, read_manifest
from tasks.download.keys import originals_dataset
from tasks.evaluate.config import EvaluateParams
from tasks.evaluate.generate import (cached_prompts, generate_missing, generation_protocol,
                                     iter_generated, samples_prefix)
from tasks.evaluate.inception import inception_id, load_inception
from tasks.evaluate.metrics import (add_clip_pairs, add_images, fid_value, new_clip_score,
                                    new_fid, set_real_stats)
from tasks.evaluate.protocol import FEATURE_RESIZE, REAL_RESIZE, protocol_hash
from tasks.evaluate.real_stats import cached_real_stats
from tasks.params import Params


EncodersLoader = Callable[[Params, torch.device], Encoders]


@dataclass(frozen=True)
class Evaluation:
    result: dict[str, Any]  # JSON-able: metrics, protocol, cache URIs
    grid_png: bytes  # the first grid_images samples


def fid_protocol(ev: EvaluateParams, dataset: dict[str, Any], real_count: int,
                 checkpoint: Checkpoint, inception_name: str) -> dict[str, Any]:
    """What must be equal for two FIDs (or CLIP scores) to be compared."""
    return {"dataset": dataset["dataset"], "manifest": dataset["manifest"],
            "num_samples": ev.num_samples, "num_real": real_count,
            "resolution": ev.resolution, "sampler": "edm-heun", "steps": ev.steps,
            "guidance": ev.guidance, "sigma_min": ev.sigma_min, "sigma_max": ev.sigma_max,
            "rho": ev.rho, "seed": ev.seed, "weights": checkpoint.weights,
            "feature_network": inception_name, "real_resize": REAL_RESIZE,
            "feature_resize": FEATURE_RESIZE, "clip_model": ev.clip_model,
            "metrics_impl": f"torchmetrics-{torchmetrics.__version__}"}


def coco_manifest(params: Params) -> tuple[Manifest, str]:
    """The raw evaluation dataset's manifest and the root of its FID caches."""
    raw_prefix = params.storage.uri(params.storage.raw_prefix, params.evaluate.dataset)
    manifest = read_manifest(raw_prefix)
    if manifest is None or not manifest.shards:
        raise FileNotFoundError(f"no {params.evaluate.dataset} manifest with shards at "
                                f"{raw_prefix}: run the download step for it first")
    return manifest, s3.join(raw_prefix, "_fid")


def reference_manifest(params: Params) -> Manifest:
    """The evaluation set's images as fetched (all of them, not filtered or re-encoded for
    training): the source of the FID reference statistics."""
    name = originals_dataset(params.evaluate.dataset)
    prefix = params.storage.uri(params.storage.raw_prefix, name)
    manifest = read_manifest(prefix)
    if manifest is None or not manifest.shards:
        raise OperationalError(f"no {name} manifest with shards at {prefix}: run the download "
                               f"step (it keeps the {params.evaluate.dataset} images as fetched)")
    return manifest


@dataclass(frozen=True)
class Generated:
    checkpoint: Checkpoint
    protocol: dict[str, Any]  # the generation protocol (cache key)
    samples: Manifest  # committed PNG shards, one per batch


def with_resolution(params: Params) -> Params:
    """The params with evaluate.resolution set: as given, else the scored stage's training
    resolution (evaluate.stage, or the last stage), so the stages declare it once."""
    ev = params.evaluate
    if ev.resolution is not None:
        return params
    stage = params.train.stage(ev.stage) if ev.stage else params.train.stages[-1]
    return dataclasses.replace(params, evaluate=dataclasses.replace(
        ev, resolution=stage.resolution))


def generated_side(params: Params, checkpoint_source: str, encoders_loader: EncodersLoader,
                   prompts: list[str], prompts_key: str, device: torch.device,
                   cache_dir: Path) -> Generated:
    """Generate (or find cached) samples for every prompt with the checkpoint's EMA weights."""
    params = with_resolution(params)
    ev = params.evaluate
    checkpoint = fetch_checkpoint(checkpoint_source, cache_dir)
    encoders = encoders_loader(params, device)
    precond = load_ema_model(checkpoint, device)
    check_compatible(precond, encoders.vae, encoders.encode_text, ev.resolution)
    protocol = generation_protocol(checkpoint, prompts_key, ev, encoders.ids)
    prefix = samples_prefix(params.storage.uri(params.storage.runs_prefix, "_eval"), protocol)
    samples = generate_missing(precond, encoders.vae, encoders.encode_text, prompts, ev, prefix,
                               protocol)
    if samples.samples != ev.num_samples:
        raise RuntimeError(f"{prefix}: {samples.samples} cached samples, expected "
                           f"{ev.num_samples}")
    return Generated(checkpoint=checkpoint, protocol=protocol, samples=samples)


def report_side(params: Params, checkpoint_source: str, encoders_loader: EncodersLoader,
                device: torch.device, cache_dir: Path) -> Generated:
    """Samples of the report set's prompts, under the same sampler settings as the tune set's;
    scored for prompt-following only (FID stays on the COCO-val draw)."""
    prompts = report_prompts()
    if not prompts:
        raise ValueError("evaluate.report_set is on but attributes.REPORT_SCENES is empty")
    ev = dataclasses.replace(params.evaluate, num_samples=len(prompts))
    key = protocol_hash({"report_prompts": prompts})
    return generated_side(dataclasses.replace(params, evaluate=ev), checkpoint_source,
                          encoders_loader, prompts, key, device, cache_dir)


def clip_score(ev: EvaluateParams, samples: Manifest, device: torch.device) -> float | None:
    """CLIP score of the samples against their prompts, or None without a CLIP model."""
    if ev.clip_model is None:
        return None
    metric = new_clip_score(ev.clip_model, device)
    add_clip_pairs(metric, iter_generated(samples), ev.feature_batch_size, samples.samples)
    return float(metric.compute())


def evaluate(params: Params, checkpoint_source: str, encoders_loader: EncodersLoader,
             cache_dir: Path | None = None) -> Evaluation:
    """FID (+ CLIP score) of a checkpoint on COCO val captions under params.evaluate.

    encoders_loader(params, device) -> Encoders supplies the VAE and text encoder (the step
    passes the encode step's loaders, so generation matches training).
    """
    params = with_resolution(params)
    ev = params.evaluate
    device = pick_device(ev.device)
    manifest, fid_root = coco_manifest(params)
    inception = load_inception(ev.inception, device)
    inception_name = inception_id(ev.inception)
    real, real_record = cached_real_stats(fid_root, reference_manifest(params), ev.resolution,
                                          ev.num_real, inception, inception_name,
                                          ev.feature_batch_size)
    prompts, prompts_key = cached_prompts(fid_root, manifest, ev.num_samples, ev.seed)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generated_side(params, checkpoint_source, encoders_loader, prompts,
                                   prompts_key, device, cache_dir or Path(tmp))
        report = (report_side(params, checkpoint_source, encoders_loader, device,
                              cache_dir or Path(tmp)) if ev.report_set else None)
    samples = generated.samples

    fid = new_fid(inception)
    set_real_stats(fid, real)
    add_images(fid, (image for image, _ in iter_generated(samples)), real=False,
               batch_size=ev.feature_batch_size, total=samples.samples)
    protocol = fid_protocol(ev, real_record["protocol"], real_record["count"],
                            generated.checkpoint, inception_name)
    shown = list(itertools.islice(iter_generated(samples), ev.grid_images))
    grid = grid_png([image for image, _ in shown], [prompt for _, prompt in shown])
    result = {"checkpoint": checkpoint_source, "checkpoint_digest": generated.checkpoint.digest,
              "fid": fid_value(fid), "clip_score": clip_score(ev, samples, device),
              # demo vocabulary only (demo/attributes.py); None for other prompts
              "prompt_following": prompt_following(
                  ((image.numpy(), prompt) for image, prompt in iter_generated(samples)),
                  ((image.numpy(), prompt) for image, prompt in
                   (iter_generated(report.samples) if report else ()))),
              "protocol": protocol, "protocol_hash": protocol_hash(protocol),
              "generation": generated.protocol, "real_stats": real_record["uri"],
              "real_skipped": real_record["skipped"],
              "samples": s3.join(samples.prefix, "manifest.json"),
              "report_samples": report and s3.join(report.samples.prefix, "manifest.json"),
              "batches_generated": samples.stats.get("batches_generated", 0)}
    return Evaluation(result=result, grid_png=grid)
