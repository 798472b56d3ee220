"""Tiny random-init encoders saved in Hugging Face format, for tests and the demo profile.

They exercise the real loading code (`from_pretrained`) with no download. The tokenizer is a
byte-level CLIP BPE with no merges: every byte is a token, so any caption tokenizes offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_TEXT_DIM = 64  # demo caption token width (the full recipe: 1024)


def _byte_unicode_table() -> list[str]:
    """CLIP's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict.fromkeys(printable), 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = None
    table = []
    for byte in chars:
        if byte in printable:
            table.append(chr(byte))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


def save_tiny_tokenizer(path: Path | str, max_length: int = 77) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_unicode_table()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                              model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_text_encoder(path: Path | str, hidden: int = TINY_TEXT_DIM, seed: int = 0) -> Path:
    """A 2-layer CLIP text tower of width `hidden` plus its tokenizer, in one folder."""
    path = save_tiny_tokenizer(path)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=514, hidden_size=hidden, intermediate_size=hidden * 2,
                            num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                            pad_token_id=513)
    CLIPTextModel(config).save_pretrained(path)
    return path


def save_tiny_vae(path: Path | str, seed: int = 0) -> Path:
    """A 4-channel AutoencoderKL that downsamples by 4 (two blocks), SDXL's scaling factor."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
        scaling_factor=0.13025,
    )
    vae.save_pretrained(path)
    return Path(path)
