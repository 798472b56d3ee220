"""EDM (Karras et al. 2022) around MicroDiT: preconditioning, training loss, Heun sampler.

Three separate pieces, as in NVlabs/edm: EDMPrecond owns c_skip/c_out/c_in/c_noise and turns
the raw network into a denoiser D(x; sigma); EDMLoss owns the noise distribution, the loss weight
and caption dropout; edm_heun_sampler integrates the probability-flow ODE with a denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.ema import unwrap
from model.microdit import DiTOutput, MicroDiT


# The std of the scaled latents the network is preconditioned for (EDM's sigma_data): declared
# once here; the loss, the preconditioning and the exported diffusers transformer read it.
SIGMA_DATA = 0.9


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with c_noise = ln(sigma) / 4."""

    def __init__(self, net: MicroDiT | nn.Module, sigma_data: float = SIGMA_DATA) -> None:
        """net: a MicroDiT, possibly compiled or DDP-wrapped."""
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                mask_ratio: float = 0.0, generator: torch.Generator | None = None) -> DiTOutput:
        """x (B, C, H, W) noisy latents, sigma (B,) noise levels, text (B, L, caption_dim).

        Returns the denoised latents (zeros-based F on dropped patches) and the keep mask.
        """
        sd2 = self.sigma_data ** 2
        s = sigma.to(torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1 / (s ** 2 + sd2).sqrt()
        c_noise = s.log().flatten() / 4  # (B,)
        raw = self.net((c_in * x).to(x.dtype), c_noise, text, mask_ratio, generator)
        denoised = c_skip * x.to(torch.float32) + c_out * raw.sample.to(torch.float32)
        return DiTOutput(denoised, raw.keep)


@dataclass(frozen=True)
class EDMLoss:
    """Weighted denoising loss; with masking only kept patches count.

    ln(sigma) ~ N(p_mean, p_std); weight (sigma^2 + sd^2) / (sigma sd)^2 makes the loss of an
    ideal network scale-free across sigma. Captions are zeroed with probability
    caption_drop_prob so that the same network also learns the unconditional denoiser that
    classifier-free guidance needs.
    """

    p_mean: float = -0.6  # mean of ln(sigma): -0.6 at 256 px, 0.0 at 512 px
    p_std: float = 1.2  # std of ln(sigma): 1.2 at 256 px, 0.6 at 512 px
    sigma_data: float = SIGMA_DATA  # std of the scaled latents
    caption_drop_prob: float = 0.1  # probability of an all-zero caption (CFG training)

    def __post_init__(self) -> None:
        if self.p_std <= 0 or self.sigma_data <= 0:
            raise ValueError("EDMLoss: p_std and sigma_data must be > 0")
        if not 0.0 <= self.caption_drop_prob <= 1.0:
            raise ValueError(f"EDMLoss: caption_drop_prob {self.caption_drop_prob} not in [0, 1]")

    def __call__(self, precond: nn.Module, latents: torch.Tensor, text: torch.Tensor,
                 mask_ratio: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss for clean latents (B, C, H, W) and captions (B, L, caption_dim)."""
        batch, device = latents.shape[0], latents.device
        latents = latents.to(torch.float32)
        sigma = (torch.randn(batch, device=device, generator=generator) * self.p_std
                 + self.p_mean).exp()  # (B,)
        noise = torch.randn(latents.shape, device=device, generator=generator)
        drop = torch.rand(batch, device=device, generator=generator) < self.caption_drop_prob
        text = text * (~drop).view(-1, 1, 1).to(text.dtype)

        out = precond(latents + noise * sigma.view(-1, 1, 1, 1), sigma, text, mask_ratio,
                      generator)
        weight = ((sigma ** 2 + self.sigma_data ** 2)
                  / (sigma * self.sigma_data) ** 2).view(-1, 1, 1, 1)
        per_value = weight * (out.sample - latents) ** 2  # (B, C, H, W)
        # Either module may be compiled or DDP-wrapped; the config lives on the plain network.
        patch_size = unwrap(unwrap(precond).net).config.patch_size
        return kept_patch_mean(per_value, out.keep, patch_size)


def kept_patch_mean(per_value: torch.Tensor, keep: torch.Tensor | None,
                    patch_size: int) -> torch.Tensor:
    """Mean of (B, C, H, W) values over kept patches: per sample over its kept patches, then
    over the batch. keep is (B, T) bool in row-major patch order; None means every patch."""
    if keep is None:
        return per_value.mean()
    per_patch = F.avg_pool2d(per_value.mean(dim=1), patch_size).flatten(1)  # (B, T)
    weights = keep.to(per_patch.dtype)
    return ((per_patch * weights).sum(dim=1) / weights.sum(dim=1)).mean()


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float,
                  device: torch.device | None = None) -> torch.Tensor:
    """(num_steps + 1,) float64 noise levels from sigma_max down to sigma_min, then 0."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + i / (num_steps - 1) * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sample_noise(shape: tuple[int, ...], seed: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal starting noise from a seed; every seed, 0 included, is honoured."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, device=device, generator=generator)


def _guided_denoise(precond: EDMPrecond, x: torch.Tensor, sigma: torch.Tensor,
                    text: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: D_u + g (D_c - D_u), the unconditional pass on zero captions."""
    sigmas = sigma.to(torch.float32).expand(x.shape[0])
    if guidance == 1.0:
        return precond(x.to(torch.float32), sigmas, text).sample.to(torch.float64)
    both = torch.cat([x, x]).to(torch.float32)  # (2B, C, H, W)
    captions = torch.cat([text, torch.zeros_like(text)])  # (2B, L, caption_dim)
    cond, uncond = precond(both, sigmas.repeat(2), captions).sample.to(torch.float64).chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def edm_heun_sampler(precond: EDMPrecond, noise: torch.Tensor, text: torch.Tensor,
                     num_steps: int = 30, sigma_min: float = 0.002, sigma_max: float = 80.0,
                     rho: float = 7.0, guidance: float = 5.0) -> torch.Tensor:
    """Deterministic 2nd-order Heun sampler (EDM Algorithm 1, S_churn = 0) with CFG.

    noise: (B, C, H, W) standard normal; text: (B, L, caption_dim). Returns float32 latents in
    the scaled VAE space. The state is kept in float64 as in NVlabs/edm; the network runs in
    float32 (wrap the call in autocast for bf16).
    """
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho, noise.device)
    x = noise.to(torch.float64) * sigmas[0]
    for i in range(num_steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - _guided_denoise(precond, x, s_cur, text, guidance)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if i < num_steps - 1:  # the last step lands on sigma = 0: Euler only
            d_next = (x_next - _guided_denoise(precond, x_next, s_next, text, guidance)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(torch.float32)
