"""The diffusers export: a finished stage's EMA weights + its encoders as a MicroDiTPipeline.

Tiny random-init models (tasks/encode/tiny.py, the tiny MicroDiT preset) in Hugging Face format;
no services. The pipeline's latents must equal our own sampler's for the same noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

import tasks.export  # noqa: F401  (registers MicroDiTPipeline with diffusers)
from model.config import preset
from model.edm import EDMPrecond, edm_heun_sampler, sample_noise
from model.io import from_pretrained, save_pretrained
from model.microdit import build_model
from tasks.common.encoders import encode_captions, load
from tasks.encode.config import EncodeParams
from tasks.encode.tiny import TINY_TEXT_DIM, save_tiny_text_encoder, save_tiny_vae
from tasks.evaluate.config import EvaluateParams
from tasks.export import MicroDiTPipeline
from tasks.export.export import export_next_to, export_run
from tests.model.helpers import randomized

PROMPTS = ["a red cube on a table", "Café “crème” &amp; ﬁsh"]


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> SimpleNamespace:
    """The two sections export reads (the step's Params carries the same)."""
    root = tmp_path_factory.mktemp("encoders")
    encode = EncodeParams(vae=str(save_tiny_vae(root / "vae")),
                          text_encoder=str(save_tiny_text_encoder(root / "text")), device="cpu")
    return SimpleNamespace(encode=encode, evaluate=EvaluateParams())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A stage checkpoint folder: raw weights in model/, other (EMA) weights in ema/."""
    root = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    config = preset("tiny", caption_dim=TINY_TEXT_DIM)
    save_pretrained(randomized(build_model(config), seed=1), root / "model")
    save_pretrained(randomized(build_model(config), seed=2), root / "ema")
    return root


def test_export_writes_the_diffusers_layout(params: SimpleNamespace, checkpoint: Path,
                                            tmp_path: Path) -> None:
    out = export_run(str(checkpoint), params, tmp_path / "pipe")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "MicroDiTPipeline"
    assert index["transformer"] == ["tasks.export.pipeline", "MicroDiTTransformer"]
    assert index["scheduler"] == ["tasks.export.pipeline", "EDMHeunScheduler"]
    assert {"vae", "text_encoder", "tokenizer"} <= set(index)
    assert (index["text_length"], index["tokenizer_compat"]) == (77, "open_clip")
    # The sampling the model was scored with travels with it: `tasks sample`'s defaults.
    assert (index["guidance_scale"], index["num_inference_steps"]) == \
        (params.evaluate.guidance, params.evaluate.steps)
    for folder in ("vae", "text_encoder", "tokenizer", "transformer", "scheduler"):
        assert (out / folder).is_dir(), folder


def test_loaded_pipeline_equals_our_sampler(params: SimpleNamespace, checkpoint: Path,
                                            tmp_path: Path) -> None:
    out = export_run(str(checkpoint), params, tmp_path / "pipe")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, MicroDiTPipeline)
    pipe.set_progress_bar_config(disable=True)
    steps, guidance, seed = 4, 5.0, 0
    latents = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(seed), output_type="latent").images

    ours_net = from_pretrained(checkpoint / "ema").eval()
    text = torch.from_numpy(encode_captions(load(params.encode), PROMPTS, 77)).float()
    cfg = ours_net.config
    noise = sample_noise((len(PROMPTS), cfg.latent_channels, cfg.input_size, cfg.input_size),
                         seed)
    want = edm_heun_sampler(EDMPrecond(ours_net), noise, text, num_steps=steps,
                            guidance=guidance, sigma_min=params.evaluate.sigma_min,
                            sigma_max=params.evaluate.sigma_max, rho=params.evaluate.rho)
    assert (latents - want).abs().max().item() < 1e-5

    images = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed)).images
    side = cfg.input_size * 4  # the tiny VAE upsamples by 4
    assert [im.size for im in images] == [(side, side)] * 2
    assert all(im.mode == "RGB" for im in images)


def test_export_takes_the_ema_weights(params: SimpleNamespace, checkpoint: Path,
                                      tmp_path: Path) -> None:
    pipe = MicroDiTPipeline.from_pretrained(export_run(str(checkpoint), params, tmp_path / "p"))
    ema = load_file(str(checkpoint / "ema" / "model.safetensors"))
    raw = load_file(str(checkpoint / "model" / "model.safetensors"))
    ours = pipe.transformer.net.state_dict()
    assert all(torch.equal(ours[k], ema[k]) for k in ema)
    assert not all(torch.equal(ours[k], raw[k]) for k in raw)


def test_export_next_to_a_local_checkpoint(params: SimpleNamespace, checkpoint: Path) -> None:
    where = export_next_to(str(checkpoint), params)
    assert where == str(checkpoint / "diffusers")
    assert (checkpoint / "diffusers" / "model_index.json").is_file()
