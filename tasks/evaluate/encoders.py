"""The VAE decoder and caption encoder for generation: the encode step's, loaded the same way.

Generation must condition on exactly what training saw, so this reuses tasks/common/encoders.py:
the same ids/folders from params.encode, the same from_pretrained loading and dtype rules, and
the same caption embedding (77 tokens after the final LayerNorm, rounded to fp16 as stored in
the latent shards). Only the device comes from params.evaluate.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tasks.common import encoders as encode_encoders
from tasks.evaluate.score import Encoders
from tasks.params import Params


def load_encoders(params: Params, device: torch.device) -> Encoders:
    """The encode step's VAE and text encoder, as named in params.encode, on `device`."""
    enc_params = params.encode
    loaded = encode_encoders.load(replace(enc_params, device=device.type))

    @torch.no_grad()
    def encode_text(captions: list[str]) -> torch.Tensor:
        embeddings = encode_encoders.encode_captions(loaded, captions, enc_params.text_length)
        return torch.from_numpy(embeddings).float()  # (B, text_length, D)

    vae_id = (f"{enc_params.vae}/{enc_params.vae_subfolder}" if enc_params.vae_subfolder
              else enc_params.vae)
    return Encoders(vae=loaded.vae, encode_text=encode_text,
                    ids={"vae": vae_id, "text_encoder": enc_params.text_encoder})
