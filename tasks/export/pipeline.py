"""MicroDiT in the diffusers contract: a ModelMixin transformer, an EDM Heun scheduler and a
DiffusionPipeline that holds them with the VAE, tokenizer and text encoder.

The maths stays in model/: the transformer wraps MicroDiT, the denoiser is EDMPrecond, the
noise levels are karras_sigmas, and one scheduler step is the Heun step of edm_heun_sampler, so
the pipeline's latents equal our sampler's for the same noise (tests/tasks/test_export.py).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from model.config import MicroDiTConfig
from model.edm import SIGMA_DATA, EDMPrecond, karras_sigmas
from model.microdit import MicroDiT
from tasks.common.autoencoder import decode_pixels
from tasks.common.encoders import tokenize_captions

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x float64, sigma) -> D(x)


class MicroDiTTransformer(ModelMixin, ConfigMixin):
    """MicroDiT behind EDM preconditioning: forward(x, sigma, text) is the denoiser D."""

    @register_to_config
    def __init__(self, microdit: dict[str, Any] | None = None, sigma_data: float = SIGMA_DATA) -> None:
        """microdit: the MicroDiTConfig fields (model/config.py); sigma_data: EDM's."""
        super().__init__()
        self.precond = EDMPrecond(MicroDiT(MicroDiTConfig(**(microdit or {}))), sigma_data)

    @property
    def net(self) -> MicroDiT:
        return self.precond.net

    @classmethod
    def from_microdit(cls, net: MicroDiT, sigma_data: float = SIGMA_DATA) -> MicroDiTTransformer:
        out = cls(microdit=asdict(net.config), sigma_data=sigma_data)
        out.net.load_state_dict(net.state_dict(), strict=True)
        return out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) noisy latents, sigma (B,), text (B, L, caption_dim) -> denoised."""
        return self.precond(x, sigma, text).sample


class EDMHeunScheduler(SchedulerMixin, ConfigMixin):
    """EDM's deterministic Heun sampler (Algorithm 1, S_churn = 0) as a diffusers scheduler.

    One `step` is a whole Heun step, both denoiser calls, so it takes the denoiser instead of a
    model output; the state stays in float64 as in model/edm.py edm_heun_sampler.
    """

    order = 2

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0) -> None:
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    def set_timesteps(self, num_inference_steps: int,
                      device: torch.device | str | None = None) -> None:
        cfg = self.config
        self.sigmas = karras_sigmas(num_inference_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho,
                                    torch.device(device) if device is not None else None)
        self.num_inference_steps = num_inference_steps

    @property
    def timesteps(self) -> torch.Tensor:
        """The noise levels each step starts from (num_inference_steps,)."""
        return self.sigmas[:-1]

    def init_sample(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise -> the float64 starting point at sigma_max."""
        return noise.to(torch.float64) * self.sigmas[0]

    def step(self, denoise: Denoiser, index: int, sample: torch.Tensor) -> torch.Tensor:
        """x at sigmas[index] -> x at sigmas[index + 1]; the last step (to 0) is Euler only."""
        s_cur, s_next = self.sigmas[index], self.sigmas[index + 1]
        d_cur = (sample - denoise(sample, s_cur)) / s_cur
        x_next = sample + (s_next - s_cur) * d_cur
        if index < self.num_inference_steps - 1:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = sample + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        return x_next


class MicroDiTPipeline(DiffusionPipeline):
    """Text to image with MicroDiT: open_clip-compatible tokens, CFG Heun sampling, autoencoder
    decode (the AutoencoderKL or AutoencoderDC it was trained with)."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any,
                 transformer: MicroDiTTransformer, scheduler: EDMHeunScheduler,
                 text_length: int = 77, tokenizer_compat: str = "open_clip",
                 guidance_scale: float = 5.0, num_inference_steps: int = 30) -> None:
        """guidance_scale, num_inference_steps: what the model was evaluated with (the export
        stores them in model_index.json), the defaults of a call that names none."""
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, scheduler=scheduler)
        self.register_to_config(text_length=text_length, tokenizer_compat=tokenizer_compat,
                                guidance_scale=guidance_scale,
                                num_inference_steps=num_inference_steps)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """(B, text_length, D) float32 caption tokens, rounded to fp16 as the latent shards
        store them (tasks/common/encoders.py encode_captions)."""
        ids = tokenize_captions(self.tokenizer, prompts, self.config.text_length,
                                self.config.tokenizer_compat)
        hidden = self.text_encoder(input_ids=ids.to(self.text_encoder.device)).last_hidden_state
        return hidden.to(torch.float16).float()

    def _guided(self, text: torch.Tensor, guidance: float) -> Denoiser:
        """D_u + g (D_c - D_u), the unconditional pass on zero captions (model/edm.py)."""

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            sigmas = sigma.to(torch.float32).expand(x.shape[0])
            if guidance == 1.0:
                return self.transformer(x.to(torch.float32), sigmas, text).to(torch.float64)
            both = torch.cat([x, x]).to(torch.float32)  # (2B, C, H, W)
            captions = torch.cat([text, torch.zeros_like(text)])  # (2B, L, D)
            cond, uncond = self.transformer(both, sigmas.repeat(2), captions).to(
                torch.float64).chunk(2)
            return uncond + guidance * (cond - uncond)

        return denoise

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Images for prompt(s). Steps and guidance default to the evaluated ones in the
        config. The starting noise is `latents` if given, else drawn on the CPU from
        `generator`, as model/edm.py sample_noise does. output_type: pil, np or latent
        (scaled autoencoder latents, what edm_heun_sampler returns)."""
        num_inference_steps = num_inference_steps or self.config.num_inference_steps
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device
        cfg = self.transformer.net.config
        shape = (len(prompts), cfg.latent_channels, cfg.input_size, cfg.input_size)
        noise = latents if latents is not None else torch.randn(shape, generator=generator)
        text = self.encode_prompt(prompts).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        denoise = self._guided(text, guidance_scale)
        x = self.scheduler.init_sample(noise.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for i in self.progress_bar(range(num_inference_steps)):
                x = self.scheduler.step(denoise, i, x)
        x = x.to(torch.float32)
        if output_type == "latent":
            images: Any = x
        else:
            array = decode_pixels(self.vae, x)  # AutoencoderKL or AutoencoderDC, its scale/shift
            images = array.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            if output_type == "pil":
                images = self.numpy_to_pil(images.astype(np.float32) / 255.0)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
