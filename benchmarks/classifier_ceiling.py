"""How well the prompt-following classifier reads scenes a perfect generator would produce.

Draws fresh demo scenes (infra/mirror/corpus.py) at native sizes, crops and resizes them as the
encode step does, and classifies them twice: as drawn, and after a round trip through the demo
VAE (encode to the posterior mean, decode as the evaluate step does). The decoded score is the
ceiling of the demo's prompt-following: no generator can score above what its own VAE keeps.

    python -m benchmarks.classifier_ceiling [--scenes 480] [--seed 11]

Prints per-attribute accuracy and the shape confusion (wanted -> read) for both. Needs the demo
VAE (`python -m tasks.models`). Results: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import random

import numpy as np
import torch


def scenes_and_images(count: int, seed: int) -> tuple[list, torch.Tensor]:
    """Scenes (a quarter held-out pairs, as COCO val) and their (N, 3, 64, 64) images in [-1, 1]."""
    from infra.mirror.corpus import image_size, make_image, scene
    from tasks.common.images import center_crop_resize, to_tensor

    rng = random.Random(seed)
    scenes = [scene(rng, held_out_share=0.25) for _ in range(count)]
    images = torch.stack([to_tensor(center_crop_resize(
        make_image(rng, image_size(rng, small_share=0.0), item), 64)) for item in scenes])
    return scenes, images


def read_back(scenes: list, images: np.ndarray) -> dict:
    """Accuracy per attribute and the shape confusion of uint8 (N, 3, H, W) images."""
    from demo.attributes import accuracy, classify

    got = [classify(image) for image in images]
    confusion = collections.Counter(f"{want.shape} -> {read.shape if read else None}"
                                    for want, read in zip(scenes, got))
    return {**accuracy(list(zip(scenes, got))), "shape_confusion": dict(sorted(confusion.items()))}


def measure(count: int, seed: int) -> dict:
    from diffusers import AutoencoderKL

    from infra.settings import REPO_ROOT
    from tasks.common.generation import decode
    from tasks.models import build_local_models
    from tasks.params import load_params

    params = load_params(profile="demo")
    build_local_models(params)
    vae = AutoencoderKL.from_pretrained(REPO_ROOT / params.encode.vae).eval()
    scenes, images = scenes_and_images(count, seed)
    drawn = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        decoded = decode(vae, latents).numpy()
    return {"scenes": count, "seed": seed, "drawn": read_back(scenes, drawn),
            "vae_decoded": read_back(scenes, decoded)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=480)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.scenes, args.seed), indent=1))


if __name__ == "__main__":
    main()
