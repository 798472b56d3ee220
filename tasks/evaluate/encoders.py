"""The VAE decoder and caption encoder for generation: the ones the checkpoint was trained with.

Sources come from params.encode (the same ids/folders the encode step used for the training
latents and text embeddings), loaded with from_pretrained; local folders resolve against the repo.
Captions are encoded as in training: 77 tokens (padded, truncated), the full token sequence after
the final LayerNorm (last_hidden_state).
"""

from __future__ import annotations

from typing import Any

import torch

from tasks.evaluate.generate import TextEncoder
from tasks.evaluate.metrics import resolve_model_path
from tasks.evaluate.score import Encoders
from tasks.params import Params

MAX_TOKENS = 77  # CLIP context length used in training


def caption_encoder(tokenizer: Any, text_model: Any, device: torch.device) -> TextEncoder:
    """captions -> (B, 77, D) float32 token embeddings on device."""

    @torch.no_grad()
    def encode(captions: list[str]) -> torch.Tensor:
        tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS,
                           truncation=True, return_tensors="pt")
        out = text_model(input_ids=tokens.input_ids.to(device))
        return out.last_hidden_state.float()

    return encode


def load_encoders_from(vae: str, text_encoder: str, tokenizer: str, device: torch.device,
                       vae_subfolder: str | None = None) -> Encoders:
    """Load an AutoencoderKL and a CLIP text tower + tokenizer with from_pretrained."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    vae_path = resolve_model_path(vae)
    text_path = resolve_model_path(text_encoder)
    kwargs = {"subfolder": vae_subfolder} if vae_subfolder else {}
    vae_model = AutoencoderKL.from_pretrained(vae_path, **kwargs).to(device).eval()
    text_model = CLIPTextModel.from_pretrained(text_path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer))
    return Encoders(vae=vae_model, encode_text=caption_encoder(tok, text_model, device),
                    ids={"vae": f"{vae}/{vae_subfolder}" if vae_subfolder else vae,
                         "text_encoder": text_encoder})


def load_encoders(params: Params, device: torch.device) -> Encoders:
    """The encode step's VAE and text encoder, as named in params.encode."""
    enc = params.encode
    return load_encoders_from(vae=enc.vae, text_encoder=enc.text_encoder,
                              tokenizer=enc.tokenizer or enc.text_encoder, device=device,
                              vae_subfolder=enc.vae_subfolder)
