"""The autoencoder as a recipe choice: a diffusers AutoencoderKL or AutoencoderDC folder.

Everything the pipeline needs to know about the latent space is read from the autoencoder's
config.json, once, into a LatentSpace: the class, the latent channels, the downscale (pixels per
latent cell) and the scale/shift that bring latents to unit variance. Encode stores
`(z - shift) * scale`, generation decodes `x / scale + shift`; nothing else hard-codes 4
channels, 8x, or SDXL's 0.13025.

Per type (diffusers 0.42, docs/autoencoders.md):
- AutoencoderKL (diffusers/models/autoencoders/autoencoder_kl.py): downscale 2 **
  (len(block_out_channels) - 1); `scaling_factor`, and `shift_factor` where the VAE has one
  (null or absent: 0); `encode` returns a posterior, sampled once per image.
- AutoencoderDC (diffusers/models/autoencoders/autoencoder_dc.py): downscale 2 **
  (len(encoder_block_out_channels) - 1); `scaling_factor` only (no shift); `encode` returns the
  latent itself, deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

AutoencoderClass = Literal["AutoencoderKL", "AutoencoderDC"]
KINDS: tuple[str, ...] = ("AutoencoderKL", "AutoencoderDC")


@dataclass(frozen=True)
class LatentSpace:
    """What an autoencoder's latents look like and how they are scaled for the DiT."""

    kind: AutoencoderClass  # the diffusers class in config.json's _class_name
    channels: int  # latent channels C
    downscale: int  # px per latent cell: a 256 px image -> 256 / downscale latent px
    scale: float  # stored latent = (z - shift) * scale
    shift: float

    def latent_side(self, resolution: int) -> int:
        """Latent px per side of an image of `resolution` px."""
        return resolution // self.downscale

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        """Raw autoencoder latents -> the unit-variance latents stored and trained on."""
        return (z - self.shift) * self.scale

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Stored / sampled latents -> what the autoencoder's decoder takes."""
        return x / self.scale + self.shift


def latent_space(config: dict[str, Any]) -> LatentSpace:
    """The LatentSpace of an autoencoder config.json (a dict); a config without _class_name
    is an AutoencoderKL, as every VAE folder written before AutoencoderDC existed here."""
    kind = config.get("_class_name", "AutoencoderKL")
    if kind not in KINDS:
        raise ValueError(f"autoencoder class {kind!r} is not one of {list(KINDS)}")
    blocks = config.get("encoder_block_out_channels" if kind == "AutoencoderDC"
                        else "block_out_channels")
    if not blocks:
        raise ValueError(f"{kind} config has no block channels: cannot tell its downscale")
    shift = config.get("shift_factor") if kind == "AutoencoderKL" else None
    return LatentSpace(kind=kind, channels=int(config["latent_channels"]),
                       downscale=2 ** (len(blocks) - 1),
                       scale=float(config.get("scaling_factor", 1.0)),
                       shift=float(shift or 0.0))


def space_of(vae: Any) -> LatentSpace:
    """The LatentSpace of a loaded diffusers autoencoder."""
    return latent_space({**dict(vae.config), "_class_name": type(vae).__name__})


def autoencoder_class(kind: str) -> type:
    import diffusers

    if kind not in KINDS:
        raise ValueError(f"autoencoder class {kind!r} is not one of {list(KINDS)}")
    return getattr(diffusers, kind)


def load_autoencoder(path: str, config: dict[str, Any], dtype: torch.dtype,
                     subfolder: str | None = None) -> Any:
    """from_pretrained with the class its config names."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    cls = autoencoder_class(config.get("_class_name", "AutoencoderKL"))
    return cls.from_pretrained(path, torch_dtype=dtype, **kwargs)


def encode_raw(vae: Any, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> unscaled latents (B, C, H/f, W/f) in float32: one posterior
    sample for a KL VAE (noise drawn on the CPU from `generator`, so a device change keeps the
    draw), the deterministic latent for a DC-AE (the generator is not used)."""
    out = vae.encode(x)
    if hasattr(out, "latent_dist"):
        posterior = out.latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        return posterior.mean.float() + posterior.std.float() * noise.to(posterior.mean.device)
    return out.latent.float()


@torch.no_grad()
def decode_pixels(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Stored-scale latents (B, C, h, w) -> uint8 images (B, 3, H, W), for either class."""
    raw = space_of(vae).from_model(latents.float())
    pixels = vae.decode(raw.to(vae.dtype)).sample.float()  # (B, 3, H, W) in [-1, 1]
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
