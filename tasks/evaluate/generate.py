"""Generated side of FID: sample COCO captions with the EMA MicroDiT, decode, cache PNGs in S3.

The checkpoint, the EMA denoiser and the VAE decode are the shared path of
tasks/common/generation.py; what is evaluate's own is here: the drawn prompts, the per-sample
noise seeds, the protocol and the resumable cache.

Generation is batched, and each batch is one committed shard (tasks/common/shards.py) of PNGs
plus captions under a prefix keyed by the checkpoint's content digest and the generation
protocol hash. A rerun lists the committed batches and generates only the missing ones; the
initial noise of sample i depends only on (seed, i), so a resumed run gives the same images as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from infra import s3
from model.edm import EDMPrecond, edm_heun_sampler, sample_noise
from tasks.common.generation import Checkpoint, TextEncoder, decode
from tasks.common.shards import (LocalShard, Manifest, commit_shard, done_records, iter_shard,
                                 write_manifest)
from tasks.evaluate.config import EvaluateParams
from tasks.evaluate.metrics import png_to_tensor, tensor_to_png
from tasks.evaluate.protocol import manifest_id, protocol_hash


def sample_captions(sample: dict[str, bytes]) -> list[str]:
    """All non-empty captions of a raw COCO sample: json 'captions' if present, else txt."""
    captions: list[str] = []
    if "json" in sample:
        meta = json.loads(sample["json"])
        listed = meta.get("captions") if isinstance(meta, dict) else None
        if isinstance(listed, list):
            captions = [c.strip() for c in listed if isinstance(c, str) and c.strip()]
    if not captions and "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace").strip()
        captions = [text] if text else []
    return captions


def draw_prompts(manifest: Manifest, num: int, seed: int) -> list[str]:
    """num captions drawn without replacement from every caption of the dataset, seeded."""
    pool: list[str] = []
    for shard in tqdm(manifest.shards, desc="caption pool", unit="shard"):
        for _key, sample in iter_shard(shard.uri):
            pool.extend(sample_captions(sample))
    if len(pool) < num:
        raise ValueError(f"{manifest.dataset} has {len(pool)} captions, fewer than "
                         f"evaluate.num_samples={num}")
    return random.Random(seed).sample(pool, num)


def cached_prompts(root: str, manifest: Manifest, num: int, seed: int) -> tuple[list[str], str]:
    """The drawn captions, stored once per (dataset content, num, seed); returns them + hash."""
    key = protocol_hash({"dataset": manifest.dataset, "manifest": manifest_id(manifest),
                         "num": num, "seed": seed})
    uri = s3.join(root, "prompts", f"{key}.json")
    if s3.exists(uri):
        return s3.get_json(uri)["prompts"], key
    prompts = draw_prompts(manifest, num, seed)
    s3.put_json(uri, {"dataset": manifest.dataset, "num": num, "seed": seed, "prompts": prompts})
    return prompts, key


def noise_seed(seed: int, index: int) -> int:
    """Per-sample seed: a hash of (seed, index), so samples never share noise across seeds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:7], "big")


@torch.no_grad()
def generate_images(precond: EDMPrecond, vae: Any, encode_text: TextEncoder,
                    prompts: list[str], indices: list[int], ev: EvaluateParams) -> torch.Tensor:
    """uint8 (B, 3, H, W) images for prompts, sample i starting from noise_seed(seed, i)."""
    device = next(precond.parameters()).device
    cfg = precond.net.config
    shape = (cfg.latent_channels, cfg.input_size, cfg.input_size)
    noise = torch.stack([sample_noise(shape, noise_seed(ev.seed, i)) for i in indices])
    text = encode_text(prompts).to(device, torch.float32)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        latents = edm_heun_sampler(precond, noise.to(device), text, num_steps=ev.steps,
                                   sigma_min=ev.sigma_min, sigma_max=ev.sigma_max, rho=ev.rho,
                                   guidance=ev.guidance)
    return decode(vae, latents)


def generation_protocol(checkpoint: Checkpoint, prompts_key: str, ev: EvaluateParams,
                        encoders: dict[str, str]) -> dict[str, Any]:
    """Everything that determines the generated images (and their cache prefix)."""
    return {"checkpoint": checkpoint.digest, "weights": checkpoint.weights,
            "prompts": prompts_key, "num_samples": ev.num_samples,
            "resolution": ev.resolution, "sampler": "edm-heun", "steps": ev.steps,
            "guidance": ev.guidance, "sigma_min": ev.sigma_min, "sigma_max": ev.sigma_max,
            "rho": ev.rho, "seed": ev.seed, "batch_size": ev.batch_size, **encoders}


def samples_prefix(root: str, protocol: dict[str, Any]) -> str:
    return s3.join(root, "samples", protocol["checkpoint"], protocol_hash(protocol))


def generate_missing(precond: EDMPrecond, vae: Any, encode_text: TextEncoder,
                     prompts: list[str], ev: EvaluateParams, prefix: str,
                     protocol: dict[str, Any]) -> Manifest:
    """Generate and commit every batch not yet committed under prefix; returns the manifest."""
    done = done_records(prefix)
    batches = range(0, len(prompts), ev.batch_size)
    todo = [start for start in batches if f"batch-{start // ev.batch_size:06d}" not in done]
    with tempfile.TemporaryDirectory() as tmp, \
            tqdm(total=len(todo) * ev.batch_size, desc="generate", unit="img") as bar:
        for start in todo:
            indices = list(range(start, min(start + ev.batch_size, len(prompts))))
            batch_prompts = [prompts[i] for i in indices]
            images = generate_images(precond, vae, encode_text, batch_prompts, indices, ev)
            with LocalShard(Path(tmp)) as shard:
                for i, image, caption in zip(indices, images, batch_prompts):
                    shard.write(f"s{i:07d}", {"png": tensor_to_png(image), "txt": caption})
            commit_shard(shard.path, prefix, f"batch-{start // ev.batch_size:06d}",
                         shard.samples)
            shard.path.unlink(missing_ok=True)
            bar.update(len(indices))
    return write_manifest("generated", prefix, stats={"protocol": protocol,
                                                      "batches_generated": len(todo)})


def iter_generated(manifest: Manifest) -> Iterator[tuple[torch.Tensor, str]]:
    """(uint8 (3, H, W) image, caption) pairs from cached generation shards, in index order."""
    for shard in manifest.shards:
        for _key, sample in iter_shard(shard.uri):
            yield png_to_tensor(sample["png"]), sample["txt"].decode("utf-8")
