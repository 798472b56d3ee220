"""Load the VAE and the CLIP text tower with from_pretrained and encode batches with them.

Encode uses them to make the latent shards; captioning resolves its model folders like them;
evaluation, the training sample grid and the diffusers export load them again so generation
conditions on exactly what training saw. One copy, below every step that loads them.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import ftfy
import numpy as np
import torch

from infra.settings import REPO_ROOT
from tasks.common.autoencoder import LatentSpace, encode_raw, load_autoencoder, space_of
from tasks.common.device import pick_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(name: str) -> str:
    """A local folder (relative to the repository root) or a Hugging Face id, unchanged."""
    path = Path(name)
    if not path.is_absolute() and (REPO_ROOT / path).exists():
        return str(REPO_ROOT / path)
    return name


@dataclass
class Encoders:
    vae: Any
    text_model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    space: LatentSpace  # the autoencoder's channels, downscale and scale/shift
    tokenizer_compat: str = "open_clip"  # EncodeParams.tokenizer_compat


class EncoderChoice(Protocol):
    """Which encoders to load and how to run them: the fields of params.encode (EncodeParams,
    tasks/encode/config.py) that loading reads, named here so the floor imports no step."""

    vae: str
    vae_subfolder: str | None
    text_encoder: str
    tokenizer: str | None
    tokenizer_compat: Literal["open_clip", "hf"]
    compile: bool
    device: str
    dtype: Literal["fp32", "bf16", "fp16"]


def read_vae_config(name: str, subfolder: str | None = None) -> dict[str, Any]:
    """config.json of an autoencoder folder or hub id (from the local cache when offline)."""
    from diffusers import AutoencoderKL  # any ModelMixin reads any model's config.json

    kwargs = {"subfolder": subfolder} if subfolder else {}
    return dict(AutoencoderKL.load_config(resolve(name), **kwargs))


def load(params: EncoderChoice) -> Encoders:
    from transformers import AutoTokenizer, CLIPTextModel

    device = pick_device(params.device)
    # Autocast-free path: weights in the compute dtype on GPU; fp32 on CPU (bf16 is slow there).
    dtype = DTYPES[params.dtype] if device.type == "cuda" else torch.float32
    vae = load_autoencoder(resolve(params.vae), read_vae_config(params.vae, params.vae_subfolder),
                           dtype, params.vae_subfolder)
    vae = vae.to(device).eval()
    if device.type == "cuda":
        vae = vae.to(memory_format=torch.channels_last)
        if params.compile:
            vae.encoder = torch.compile(vae.encoder)  # the convolutions and mid-block attention
    text = CLIPTextModel.from_pretrained(resolve(params.text_encoder), torch_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(resolve(params.tokenizer or params.text_encoder))
    return Encoders(vae=vae, text_model=text.to(device).eval(), tokenizer=tokenizer,
                    device=device, dtype=dtype,
                    space=space_of(vae),
                    tokenizer_compat=params.tokenizer_compat)


@torch.no_grad()
def encode_images(enc: Encoders, batch: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f) as fp16 (autoencoder.py)."""
    x = batch.to(enc.device, enc.dtype)
    if enc.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    latents = enc.space.to_model(encode_raw(enc.vae, x, generator))
    return latents.cpu().to(torch.float16).numpy()


def open_clip_clean(text: str) -> str:
    """open_clip's default caption cleaning: ftfy, HTML entities unescaped twice, whitespace
    collapsed, lower case. The HF tokenizer skips the first two (curly quotes, ligatures,
    full-width letters and `&amp;` then tokenize differently)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def tokenize_captions(tokenizer: Any, captions: list[str], length: int,
                      compat: str = "open_clip") -> torch.Tensor:
    """(B, length) token ids; with compat "open_clip" equal to open_clip's tokenizer: cleaned
    as it cleans, truncated keeping the end token, padded with id 0 (the HF files of
    DFN5B-CLIP pad with <|endoftext|>, 49407, which gives other pad embeddings)."""
    if compat == "open_clip":
        captions = [open_clip_clean(c) for c in captions]
    tokens = tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                       return_tensors="pt")
    ids = tokens.input_ids
    if compat == "open_clip":
        ids = ids.masked_fill(tokens.attention_mask == 0, 0)
    return ids


@torch.no_grad()
def encode_captions(enc: Encoders, captions: list[str], length: int) -> np.ndarray:
    """Captions -> (B, length, D) fp16: the full token sequence after the final LayerNorm."""
    ids = tokenize_captions(enc.tokenizer, captions, length, enc.tokenizer_compat)
    hidden = enc.text_model(input_ids=ids.to(enc.device)).last_hidden_state
    return hidden.float().cpu().to(torch.float16).numpy()
