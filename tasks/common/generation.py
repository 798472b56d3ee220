"""The path from a checkpoint to images, shared by every step that generates.

checkpoint -> EMA denoiser (fetch_checkpoint, load_ema_model) -> sampler (model/edm.py) -> VAE
decode (decode), with the encoders the model was trained with (load_encoders). Evaluation scores
what it generates, training draws its sample grid, the diffusers export and `tasks sample` load
the same checkpoint folders, so none of them imports another step for it.

The encoders are the encode step's (tasks/common/encoders.py): the same ids/folders from
params.encode, the same from_pretrained loading and dtype rules, and the same caption embedding
(77 tokens after the final LayerNorm, rounded to fp16 as stored in the latent shards). Only the
device is the caller's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from infra import s3
from infra.settings import REPO_ROOT
from model.edm import EDMPrecond
from model.io import CONFIG_NAME, WEIGHTS_NAME, from_pretrained
from tasks.common import encoders
from tasks.common.autoencoder import decode_pixels, space_of
from tasks.common.shards import file_digest
from tasks.params import Params

EMA_SUBFOLDER = "ema"  # <checkpoint>/ema/ holds the EMA weights as a model.io folder
TextEncoder = Callable[[list[str]], torch.Tensor]  # captions -> (B, 77, caption_dim)


@dataclass(frozen=True)
class Checkpoint:
    """A MicroDiT folder on local disk, which weights it holds and its content digest."""

    source: str  # what was asked for: local path or s3:// prefix
    path: Path  # local folder with config.json + model.safetensors
    weights: str  # "ema" (the <checkpoint>/ema export) or "raw" (no EMA export found)
    digest: str  # sha256 prefix of model.safetensors: the generation cache key


def _has_model(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def _download_prefix(uri: str, folder: Path) -> None:
    base = uri.rstrip("/") + "/"
    found = False
    for object_uri in s3.list_uris(base):
        relative = object_uri[len(base):]
        if relative.endswith((CONFIG_NAME, WEIGHTS_NAME)):
            s3.download_file(object_uri, folder / relative)
            found = True
    if not found:
        raise FileNotFoundError(f"no {CONFIG_NAME}/{WEIGHTS_NAME} under {uri}")


def fetch_checkpoint(source: str, cache_dir: Path) -> Checkpoint:
    """Resolve a local folder or S3 prefix to a local model folder, preferring its EMA export."""
    if source.startswith("s3://"):
        root = cache_dir / hashlib.sha256(source.encode()).hexdigest()[:16]
        if not (_has_model(root / EMA_SUBFOLDER) or _has_model(root)):
            _download_prefix(source, root)
    else:
        root = Path(source) if Path(source).is_absolute() else REPO_ROOT / source
    if _has_model(root / EMA_SUBFOLDER):
        path, weights = root / EMA_SUBFOLDER, "ema"
    elif _has_model(root):
        path, weights = root, "raw"
    else:
        raise FileNotFoundError(f"checkpoint {source}: no {CONFIG_NAME} + {WEIGHTS_NAME} in "
                                f"{root} or {root / EMA_SUBFOLDER}")
    return Checkpoint(source=source, path=path, weights=weights,
                      digest=file_digest(path / WEIGHTS_NAME)[:16])


@dataclass(frozen=True)
class Encoders:
    """The VAE that decodes latents and the text encoder the checkpoint was trained with."""

    vae: Any  # diffusers AutoencoderKL or AutoencoderDC (tasks/common/autoencoder.py)
    encode_text: TextEncoder
    ids: dict[str, str]  # names recorded in the generation protocol



def load_ema_model(checkpoint: Checkpoint, device: torch.device) -> EDMPrecond:
    return EDMPrecond(from_pretrained(checkpoint.path, device=device).eval())


def check_compatible(precond: EDMPrecond, vae: Any, encode_text: TextEncoder,
                     resolution: int) -> None:
    """Fail early, with the fix in the message, when model, encoders and params disagree."""
    cfg, space = precond.net.config, space_of(vae)
    side = cfg.input_size * space.downscale
    if side != resolution:
        raise ValueError(f"evaluate.resolution={resolution} px but the checkpoint generates "
                         f"{cfg.input_size} latent px x {space.downscale} = {side} px: "
                         f"set evaluate.resolution to {side}")
    if space.channels != cfg.latent_channels:
        raise ValueError(f"the {space.kind} has {space.channels} latent channels, the "
                         f"checkpoint {cfg.latent_channels}: not the autoencoder it was "
                         "trained with")
    text_dim = encode_text([""]).shape[-1]
    if text_dim != cfg.caption_dim:
        raise ValueError(f"text encoder gives {text_dim}-d tokens, the checkpoint expects "
                         f"caption_dim {cfg.caption_dim}: not the encoder it was trained with")


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> uint8 images (B, 3, H, W) via the autoencoder."""
    return decode_pixels(vae, latents).cpu()


def load_encoders(params: Params, device: torch.device) -> Encoders:
    """The encode step's VAE and text encoder, as named in params.encode, on `device`."""
    enc_params = params.encode
    loaded = encoders.load(replace(enc_params, device=device.type))

    @torch.no_grad()
    def encode_text(captions: list[str]) -> torch.Tensor:
        embeddings = encoders.encode_captions(loaded, captions, enc_params.text_length)
        return torch.from_numpy(embeddings).float()  # (B, text_length, D)

    vae_id = (f"{enc_params.vae}/{enc_params.vae_subfolder}" if enc_params.vae_subfolder
              else enc_params.vae)
    return Encoders(vae=loaded.vae, encode_text=encode_text,
                    ids={"vae": vae_id, "text_encoder": enc_params.text_encoder})
