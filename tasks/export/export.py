"""Export a finished stage as a diffusers folder: EMA weights + the encoders it was trained with.

    export_run("s3://micro-budget/runs/<run>/stage2-<key>/step-.../", params, "out/pipeline")

writes the standard layout (model_index.json; vae/, text_encoder/, tokenizer/, transformer/,
scheduler/) that `DiffusionPipeline.from_pretrained(folder)` loads once tasks.export is imported
(tasks/export/__init__.py), or `MicroDiTPipeline.from_pretrained(folder)` directly.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from infra import s3
from model.io import from_pretrained
from tasks.common.encoders import load
from tasks.common.generation import fetch_checkpoint
from tasks.export.pipeline import EDMHeunScheduler, MicroDiTPipeline, MicroDiTTransformer
from tasks.params import Params

EXPORT_SUBFOLDER = "diffusers"  # <checkpoint>/diffusers/: the exported pipeline


def build_pipeline(checkpoint_uri_or_dir: str, params: Params) -> MicroDiTPipeline:
    """The pipeline of a checkpoint (its EMA export when present) and params.encode's encoders,
    on the CPU in float32, sampling by default as params.evaluate scores it (guidance, steps)."""
    with tempfile.TemporaryDirectory() as cache:
        checkpoint = fetch_checkpoint(checkpoint_uri_or_dir, Path(cache))
        net = from_pretrained(checkpoint.path)
    encoders = load(replace(params.encode, device="cpu"))
    ev = params.evaluate
    return MicroDiTPipeline(
        vae=encoders.vae, text_encoder=encoders.text_model, tokenizer=encoders.tokenizer,
        transformer=MicroDiTTransformer.from_microdit(net),
        scheduler=EDMHeunScheduler(sigma_min=ev.sigma_min, sigma_max=ev.sigma_max, rho=ev.rho),
        text_length=params.encode.text_length, tokenizer_compat=params.encode.tokenizer_compat,
        guidance_scale=ev.guidance, num_inference_steps=ev.steps)


def export_run(checkpoint_uri_or_dir: str, params: Params, out_dir: str | Path) -> Path:
    """Export a finished stage (local folder or S3 prefix) as a diffusers folder at out_dir."""
    out = Path(out_dir)
    build_pipeline(checkpoint_uri_or_dir, params).save_pretrained(out, safe_serialization=True)
    return out


def export_next_to(checkpoint_uri_or_dir: str, params: Params) -> str:
    """Export a checkpoint into its own `diffusers/` subfolder (S3 prefix or local folder);
    returns where it went. What a pipeline run calls once per finished run."""
    if not checkpoint_uri_or_dir.startswith("s3://"):
        return str(export_run(checkpoint_uri_or_dir, params,
                              Path(checkpoint_uri_or_dir) / EXPORT_SUBFOLDER))
    target = s3.join(checkpoint_uri_or_dir, EXPORT_SUBFOLDER)
    with tempfile.TemporaryDirectory() as tmp:
        local = export_run(checkpoint_uri_or_dir, params, Path(tmp) / EXPORT_SUBFOLDER)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            s3.upload_file(path, s3.join(target, path.relative_to(local).as_posix()))
    return target
