"""Encoder throughput: our encode settings vs the reference settings, images/s in one run.

Each image is encoded at 512 px and at 256 px by the VAE (one posterior sample each) and its
caption by the text tower (77 tokens), as the encode step does. On an H100, with random-init
SDXL-VAE and ViT-H/14 text-tower architectures (the issue's measurement):

    python -m benchmarks.encode --arch sdxl --images 512 --batch 64

Reference settings: fp32 weights under bf16 autocast, batch 32. Ours: `tasks.common.encoders`
(weights in bf16, channels_last on CUDA) at --batch. Inputs are synthetic tensors already in
[-1, 1], so this times the encoders, not JPEG decoding. CPU smoke test with the demo's tiny
models:

    python -m benchmarks.encode --arch tiny --images 32 --batch 16 --device cpu

The host side (docs/benchmarks.md, "Encode host side"): JPEG decode plus the resizes to 512 and
256 px of `tasks.encode.run.prepare_image`, images/s in this process (one core) and in
--workers decode processes, on JPEGs shaped like the download step's output (short side 512 px,
quality 95, a smooth picture with grain rather than pure noise, which decodes slower than a
photo):

    python -m benchmarks.encode --host --images 400 --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import io
import os

import numpy as np
import torch
from PIL import Image

from tasks.common.encoders import Encoders, encode_captions, encode_images, load
from tasks.encode.config import EncodeParams
from tasks.encode.tiny import save_tiny_text_encoder, save_tiny_tokenizer, save_tiny_vae


def save_sdxl_like(root: Path) -> tuple[str, str]:
    """Random-init SDXL VAE and ViT-H/14 text tower (1024-d, 24 layers) in HF format."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=1024,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        scaling_factor=0.13025)
    vae.save_pretrained(root / "vae")
    text_dir = save_tiny_tokenizer(root / "text")  # byte-level stand-in: any caption tokenizes
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                 num_hidden_layers=24, num_attention_heads=16,
                                 max_position_embeddings=77, hidden_act="gelu",
                                 bos_token_id=512, eos_token_id=513,
                                 pad_token_id=513)).save_pretrained(text_dir)
    return str(root / "vae"), str(text_dir)


def run(enc: Encoders, images: int, batch: int, autocast: bool) -> float:
    """images/s: every image at 512 and 256 px through the VAE, plus its caption."""
    generator = torch.Generator().manual_seed(0)
    captions = [f"a photo of thing number {i} on a table" for i in range(batch)]
    big = torch.rand(batch, 3, 512, 512) * 2 - 1
    small = torch.nn.functional.interpolate(big, size=256, mode="bicubic", antialias=True)
    ctx = torch.autocast(enc.device.type, dtype=torch.bfloat16, enabled=autocast)
    done = 0
    start = time.perf_counter()
    with ctx:
        while done < images:
            encode_images(enc, big, generator)
            encode_images(enc, small, generator)
            encode_captions(enc, captions, 77)
            done += batch
    return done / (time.perf_counter() - start)


def photo_like_jpegs(n: int, size: tuple[int, int] = (683, 512)) -> list[bytes]:
    """Smooth colour fields with grain, JPEG at quality 95 (the download step's setting)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    out = []
    for _ in range(n):
        f = rng.uniform(0.002, 0.03, (3, 2))
        field = np.stack([np.sin(x * a + y * b + rng.uniform(0, 6)) for a, b in f], -1)
        pixels = 127 + 90 * field + rng.normal(0, 12, field.shape)
        buf = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def host(images: int, workers: int) -> None:
    """Decode + resize images/s: inline (one core) and with `workers` decode processes."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from tasks.encode.run import prepare_image, prepared

    plan = {256: 0, 512: 0}
    jpgs = photo_like_jpegs(images)
    items = [{"jpg": j, "meta": {}} for j in jpgs]
    rows = {}
    start, cpu = time.perf_counter(), time.process_time()
    for _ in prepared(items, plan, None, 1):
        pass
    rows["inline (1 core)"] = images / (time.perf_counter() - start)
    # Images per CPU-second of this process: the per-core rate even on a shared, busy host.
    per_cpu_second = images / (time.process_time() - cpu)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(prepare_image, jpgs[:workers], [{}] * workers, [plan] * workers))  # start
        start = time.perf_counter()
        for _ in prepared(items, plan, pool, 4 * 32):
            pass
        rows[f"{workers} decode workers"] = images / (time.perf_counter() - start)
    print(json.dumps({"images": images, "jpeg_kb": round(sum(map(len, jpgs)) / images / 1024),
                      "size": "683x512", "cpus": os.cpu_count(),
                      "inline_images_per_cpu_second": round(per_cpu_second, 1),
                      "load_avg_1m": round(os.getloadavg()[0], 1)}))
    print("| decode + resize to 512 and 256 px | images/s | per core |\n|---|---|---|")
    for name, rate in rows.items():
        per_core = rate / (1 if name.startswith("inline") else workers)
        print(f"| {name} | {rate:.1f} | {per_core:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("sdxl", "tiny"), default="sdxl")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="compile the VAE encoder (CUDA)")
    ap.add_argument("--host", action="store_true", help="time JPEG decode + resize only")
    ap.add_argument("--workers", type=int, default=2, help="decode processes for --host")
    args = ap.parse_args()
    if args.host:
        host(args.images, args.workers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.arch == "sdxl":
            vae, text = save_sdxl_like(root)
        else:
            vae, text = str(save_tiny_vae(root / "vae")), str(save_tiny_text_encoder(root / "text"))
        ours = load(EncodeParams(vae=vae, text_encoder=text, device=args.device, dtype="bf16",
                                 compile=args.compile))
        reference = load(EncodeParams(vae=vae, text_encoder=text, device=args.device,
                                      dtype="fp32"))
        rows = {}
        for name, enc, batch, autocast in (
                ("reference: fp32 weights, bf16 autocast, batch 32", reference, 32,
                 reference.device.type == "cuda"),
                (f"ours: {str(ours.dtype).split('.')[-1]} weights, batch {args.batch}", ours,
                 args.batch, False)):
            run(enc, batch, batch, autocast)  # warm-up
            rows[name] = run(enc, args.images, batch, autocast)
    print(json.dumps({"arch": args.arch, "device": str(ours.device)}))
    print("| settings | images/s (512 + 256 px + caption) |\n|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    main()
