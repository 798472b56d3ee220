"""MLflow for a training stage: a run nested under the pipeline run, priced from params.yaml."""

from __future__ import annotations

import io
from typing import Any

import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from infra.config import flatten, to_dict
from infra.settings import mlflow_uri
from tasks.common.cost import cost_usd, gpu_hours
from tasks.params import Params
from tasks.report.tracking import experiment_id


class StageRun:
    def __init__(self, params: Params, stage: str, parent_run_id: str | None) -> None:
        self.client = MlflowClient(tracking_uri=mlflow_uri())
        tags = {"kind": "train-stage", "stage": stage, "profile": params.profile}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(experiment_id(self.client), run_name=f"train-{stage}",
                                     tags=tags)
        self.run_id = run.info.run_id
        stage_params = to_dict(params.train.stage(stage))
        train = {k: v for k, v in to_dict(params.train).items() if k != "stages"}
        for key, value in flatten({"stage": stage_params, "train": train}).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def finish(self, params: Params, summary: dict[str, Any], grid_png: bytes | None) -> None:
        gpus, seconds = summary["gpus"], summary["seconds"]
        device = params.cost.gpu_type
        self.client.log_metric(self.run_id, "gpu_hours", gpu_hours(seconds, gpus))
        self.client.log_metric(self.run_id, "cost_usd",
                               cost_usd(seconds, gpus, params.cost.usd_per_gpu_hour[device]))
        self.client.set_tag(self.run_id, "checkpoint_uri", summary["checkpoint"])
        if grid_png:
            self.client.log_image(self.run_id, _png_array(grid_png), "samples_grid.png")
        self.client.set_terminated(self.run_id)


def _png_array(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@torch.no_grad()
def sample_grid(params: Params, ema_model: torch.nn.Module) -> bytes:
    """Fixed prompts through the EMA weights, the Heun sampler and the VAE decoder, as a PNG."""
    from model.edm import EDMPrecond, edm_heun_sampler, sample_noise
    from tasks.evaluate.encoders import load_encoders
    from tasks.evaluate.grid import grid_png

    device = next(ema_model.parameters()).device
    encoders = load_encoders(params, device)
    prompts = list(params.train.sample_prompts)
    text = encoders.encode_text(prompts).to(device)
    cfg = ema_model.config
    noise = sample_noise((len(prompts), cfg.latent_channels, cfg.input_size, cfg.input_size),
                         seed=params.train.seed, device=device)
    latents = edm_heun_sampler(EDMPrecond(ema_model.eval()), noise, text,
                               num_steps=params.train.sample_steps)
    vae = encoders.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return grid_png([((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
                     for img in images])

