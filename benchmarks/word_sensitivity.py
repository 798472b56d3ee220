"""Does a demo checkpoint read each word of its prompt? The RMS change of the denoiser's output
D(x; sigma, caption) when one attribute word of a COCO-style demo caption is swapped for another
value, on the same noisy input, at a few noise levels.

    python -m benchmarks.word_sensitivity s3://micro-budget/runs/demo/stage2-<key>/step-<n> \
        [--sigmas 2 5 20] [--captions 24] [--seed 0]

A model that ignores a word gives ~0 for it whatever it does with the others. Position is split into its two words (vertical:
top <-> bottom, horizontal: left <-> right), which a model can learn one at a time. Results:
docs/benchmarks.md, "Does the demo chain learn?".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
from pathlib import Path

import torch

from model.edm import EDMPrecond, sample_noise
from tasks.evaluate.attributes import BACKGROUNDS, COLORS, SHAPES, Scene
from tasks.evaluate.encoders import load_encoders
from tasks.evaluate.generate import TextEncoder, fetch_checkpoint, load_ema_model
from tasks.params import load_params

TEMPLATE = "A {c} {s} in the {p} corner of a {b} picture."  # TextCaps/COCO's describe style
SWAPS = ("shape", "color", "vertical", "horizontal", "background")
OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}


def render(item: Scene) -> str:
    return TEMPLATE.format(c=item.color, s=item.shape, p=item.position, b=item.background)


def swapped(item: Scene, swap: str, rng: random.Random) -> Scene:
    """The scene with one attribute changed to another value (position: one of its two words)."""
    vertical, horizontal = item.position.split()
    if swap == "vertical":
        return dataclasses.replace(item, position=f"{OPPOSITE[vertical]} {horizontal}")
    if swap == "horizontal":
        return dataclasses.replace(item, position=f"{vertical} {OPPOSITE[horizontal]}")
    values = {"shape": SHAPES, "color": tuple(COLORS), "background": tuple(BACKGROUNDS)}[swap]
    current = getattr(item, swap)
    return dataclasses.replace(item, **{swap: rng.choice([v for v in values if v != current])})


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(SHAPES), rng.choice(sorted(COLORS)),
                 f"{rng.choice(['top', 'bottom'])} {rng.choice(['left', 'right'])}",
                 rng.choice(sorted(BACKGROUNDS)))


@torch.no_grad()
def sensitivity(precond: EDMPrecond, encode_text: TextEncoder, sigmas: list[float],
                captions: int, seed: int) -> dict[str, dict[str, float]]:
    """{swap: {sigma: RMS of D(x; sigma, base) - D(x; sigma, swapped)}}, averaged over
    `captions` random scenes; x is noise at the marginal scale sqrt(sigma^2 + sigma_data^2)."""
    rng = random.Random(seed)
    cfg = precond.net.config
    shape = (cfg.latent_channels, cfg.input_size, cfg.input_size)
    bases = [random_scene(rng) for _ in range(captions)]
    out: dict[str, dict[str, float]] = {}
    for swap in SWAPS:
        others = [swapped(item, swap, rng) for item in bases]
        text_a = encode_text([render(item) for item in bases])
        text_b = encode_text([render(item) for item in others])
        out[swap] = {}
        for sigma in sigmas:
            noise = torch.stack([sample_noise(shape, seed * 1000 + i) for i in range(captions)])
            x = noise * (sigma ** 2 + precond.sigma_data ** 2) ** 0.5
            s = torch.full((captions,), sigma)
            diff = precond(x, s, text_a).sample - precond(x, s, text_b).sample
            rms = diff.pow(2).mean(dim=(1, 2, 3)).sqrt().mean()
            out[swap][str(sigma)] = round(float(rms), 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a stage checkpoint: s3:// prefix or local folder")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 5.0, 20.0])
    ap.add_argument("--captions", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    params = load_params(profile="demo")
    device = torch.device("cpu")
    encoders = load_encoders(params, device)
    with tempfile.TemporaryDirectory() as tmp:
        precond = load_ema_model(fetch_checkpoint(args.checkpoint, Path(tmp)), device)
    result = sensitivity(precond, encoders.encode_text, args.sigmas, args.captions, args.seed)
    print(f"{'swap':<11}" + "".join(f"sigma {s:<6g}" for s in args.sigmas))
    for swap, row in result.items():
        print(f"{swap:<11}" + "".join(f"{v:<12.3f}" for v in row.values()))
    print(json.dumps({"checkpoint": args.checkpoint, "sensitivity": result}))
    return result


if __name__ == "__main__":
    main()
