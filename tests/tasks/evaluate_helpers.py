"""Assets for the evaluate tests, built at test time: COCO-format shards, tiny models, params."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from infra.config import build
from model.config import preset
from model.io import save_pretrained
from model.microdit import build_model
from tasks.common.shards import LocalShard, commit_shard, write_manifest
from tasks.download.keys import originals_dataset
from tasks.encode.tiny import save_tiny_text_encoder, save_tiny_vae
from tasks.params import Params

NUM_REAL = 10  # readable real images (plus one corrupt one)
TEXT_DIM = 32  # the tiny preset's caption_dim
RESOLUTION = 32  # px: the tiny preset's 8x8 latents x the tiny VAE's 4x


def jpeg(seed: int) -> bytes:
    """A smooth random colour field, 40x30 px, as JPEG bytes."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=generator)
    pixels = torch.nn.functional.interpolate(low, size=(30, 40), mode="bilinear")[0] * 255
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).round().byte().numpy()).save(buffer, "JPEG")
    return buffer.getvalue()


def write_coco_shards(prefix: str, tmp: Path) -> None:
    """Two raw shards in the download contract, plus one corrupt image that must be skipped;
    the same shards stand in for the images as fetched (coco-original, the FID reference)."""
    originals = f"{prefix.rsplit('/', 1)[0]}/{originals_dataset('coco')}"
    index = 0
    for shard_no in range(2):
        with LocalShard(tmp) as shard:
            for _ in range(NUM_REAL // 2):
                captions = [f"a photo number {index}", f"picture {index} of colours"]
                shard.write(f"coco-{index}", {"jpg": jpeg(index), "txt": captions[0],
                                              "json": {"id": index, "captions": captions}})
                index += 1
            if shard_no == 1:
                shard.write("coco-broken", {"jpg": b"not a jpeg", "txt": "broken",
                                            "json": {"captions": ["broken"]}})
        for target in (prefix, originals):
            commit_shard(shard.path, target, f"shard-{shard_no:05d}", shard.samples)
    write_manifest("coco", prefix)
    write_manifest(originals_dataset("coco"), originals)


def save_models(folder: Path) -> dict[str, str]:
    """Tiny encoders (the encode step's builders) and a tiny checkpoint with an EMA export."""
    save_tiny_vae(folder / "vae")
    save_tiny_text_encoder(folder / "text", hidden=TEXT_DIM)
    torch.manual_seed(0)
    save_pretrained(build_model(preset("tiny", caption_dim=TEXT_DIM)), folder / "ckpt" / "ema")
    return {"vae": str(folder / "vae"), "text": str(folder / "text"),
            "checkpoint": str(folder / "ckpt")}


def make_params(root: str, models: dict[str, str], **evaluate: Any) -> Params:
    """Demo-like params with storage under `root` (a key prefix) and the tiny models."""
    return build(Params, {
        "profile": "demo",
        "storage": {"bucket": "micro-budget", "raw_prefix": f"{root}/raw",
                    "runs_prefix": f"{root}/runs"},
        "encode": {"vae": models["vae"], "text_encoder": models["text"],
                   "device": "cpu", "dtype": "fp32"},
        "evaluate": {"num_samples": 8, "resolution": RESOLUTION, "steps": 2, "guidance": 2.0,
                     "batch_size": 4, "feature_batch_size": 8, "grid_images": 4,
                     "device": "cpu", **evaluate},
    }, "test")


def save_tiny_clip(folder: Path, tokenizer_folder: str) -> str:
    """Random-init CLIPModel + CLIPProcessor (32 px images) for CLIP score, saved."""
    from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel,
                              CLIPProcessor)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
            "eos_token_id": len(tokenizer) - 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                         projection_dim=16)).save_pretrained(folder / "clip")
    images = CLIPImageProcessor(size={"shortest_edge": 32},
                                crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder / "clip")
    return str(folder / "clip")
