"""A deep-compression autoencoder through the whole chain on CPU (issue 36): a tiny random-init
AutoencoderDC (16 channels, 8x) in encode.vae; encode -> latent shards -> loader -> one training
step -> sampler -> decode, then the diffusers export loaded back and sampled, and `tasks sample`
on that export. Real S3 (the test's own prefix); no MLflow, no Prefect."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderDC, DiffusionPipeline

import tasks.export  # noqa: F401  (registers MicroDiTPipeline with diffusers)
from infra.s3 import split_uri
from model.edm import edm_heun_sampler, sample_noise
from tasks.common.generation import (check_compatible, decode, fetch_checkpoint,
                                     load_ema_model, load_encoders)
from tasks.common.npy import npy_load
from tasks.common.shards import iter_shard, read_manifest
from tasks.encode.run import encode_dataset, latent_prefix
from tasks.encode.tiny import save_tiny_dcae, save_tiny_text_encoder
from tasks.export.export import export_run
from tasks.params import load_params
from tasks.sample.cli import main as sample_main
from tasks.train.loop import train
from tests.tasks.test_encode import _raw_dataset

RESOLUTION = 64  # px: 8x8 latents with the tiny DC-AE, 64 tokens at patch size 1


@pytest.fixture(scope="module")
def dcae_models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("dcae")
    return str(save_tiny_dcae(root / "vae")), str(save_tiny_text_encoder(root / "text"))


def _params(s3_prefix: str, models: tuple[str, str]):
    params = load_params(profile="demo")
    _, key = split_uri(s3_prefix)
    storage = dataclasses.replace(params.storage, raw_prefix=f"{key}/raw",
                                  latents_prefix=f"{key}/latents", runs_prefix=f"{key}/runs")
    encode = dataclasses.replace(params.encode, vae=models[0], text_encoder=models[1],
                                 datasets=("cc3m",), batch_size=4)
    stage = dataclasses.replace(params.train.stages[0], resolution=RESOLUTION, steps=1)
    train_p = dataclasses.replace(
        params.train, model="tiny", latent_downscale=8, stages=(stage,), datasets=("cc3m",),
        dataset_weights={}, global_batch=4, micro_batch=4, log_every=1000,
        checkpoint_every_images=4,
        model_overrides={"caption_dim": 64, "latent_channels": 16, "patch_size": 1})
    evaluate = dataclasses.replace(params.evaluate, resolution=RESOLUTION, steps=2,
                                   guidance=2.0)
    return dataclasses.replace(params, storage=storage, encode=encode, train=train_p,
                               evaluate=evaluate)


def test_dcae_latents_train_sample_decode_and_export(s3_prefix, dcae_models, tmp_path: Path):
    params = _params(s3_prefix, dcae_models)
    _raw_dataset(params, "cc3m", shards=1, per_shard=6)

    # Encode: latent shards of the DC-AE's shape, the manifest saying which autoencoder.
    assert encode_dataset(params, "cc3m")["samples"] == 6
    manifest = read_manifest(latent_prefix(params, "cc3m"))
    assert manifest.stats["latent"] == {"autoencoder": dcae_models[0], "kind": "AutoencoderDC",
                                        "channels": 16, "downscale": 8, "scale": 0.5,
                                        "shift": 0.0}
    assert manifest.shards[0].meta["latent"]["kind"] == "AutoencoderDC"
    _, sample = next(iter_shard(manifest.shards[0].uri))
    assert npy_load(sample[f"lat{RESOLUTION}.npy"]).shape == (16, 8, 8)

    # Loader -> one training step of a 16-channel, patch-1 MicroDiT (75 % masked: 16 of 64).
    summary = train(params, "stage1")
    assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])

    # Checkpoint -> EMA denoiser -> sampler -> DC-AE decode.
    checkpoint = fetch_checkpoint(summary["checkpoint"], tmp_path / "cache")
    precond = load_ema_model(checkpoint, torch.device("cpu"))
    assert precond.net.config.latent_channels == 16 and precond.net.config.patch_size == 1
    encoders = load_encoders(params, torch.device("cpu"))
    assert isinstance(encoders.vae, AutoencoderDC)
    check_compatible(precond, encoders.vae, encoders.encode_text, RESOLUTION)
    noise = sample_noise((2, 16, 8, 8), seed=0)
    with torch.no_grad():
        latents = edm_heun_sampler(precond, noise, encoders.encode_text(["a", "b"]),
                                   num_steps=2)
    images = decode(encoders.vae, latents.float())
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.uint8

    # The diffusers export loads back through diffusers with its DC-AE and samples.
    out = export_run(summary["checkpoint"], params, tmp_path / "pipe")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, AutoencoderDC)
    array = pipe(["a red circle"], num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert array.shape == (1, RESOLUTION, RESOLUTION, 3)

    # `tasks sample` on the export.
    grid = tmp_path / "grid.png"
    assert sample_main(["--model", str(out), "--prompt", "a blue square", "--n", "1",
                        "--steps", "2", "--out", str(grid)]) == 0
    assert grid.stat().st_size > 0


def test_latents_of_another_autoencoder_are_refused_before_training(s3_prefix, dcae_models):
    params = _params(s3_prefix, dcae_models)
    _raw_dataset(params, "cc3m", shards=1, per_shard=2)
    encode_dataset(params, "cc3m")
    # The model built for 4-channel latents at 4x, as the demo's KL VAE gives.
    kl_model = dataclasses.replace(params, train=dataclasses.replace(
        params.train, latent_downscale=4, model_overrides={"caption_dim": 64}))
    with pytest.raises(ValueError, match=r"cc3m latents are 16 channels at 8x .*, the model "
                                         r"takes 4 at 4x"):
        train(kl_model, "stage1")
