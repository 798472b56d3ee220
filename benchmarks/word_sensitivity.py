"""Does a demo checkpoint read each word of its prompt? The RMS change of the denoiser's output
D(x; sigma, caption) when one attribute word of a COCO-style demo caption is swapped for another
value, on the same noisy input, at a few noise levels.

    python -m benchmarks.word_sensitivity s3://micro-budget/runs/demo/stage2-<key>/step-<n> \
        [--sigmas 2 5 20] [--captions 24] [--seed 0] [--samples s3://.../manifest.json] \
        [--entanglement]

A model that ignores a word gives ~0 for it whatever it does with the others. Position is split
into its two words (vertical: top <-> bottom, horizontal: left <-> right), which a model can
learn one at a time.

--samples also classifies an evaluate run's cached samples (its evaluate.json "samples") and
counts each misplaced shape as a left/right, top/bottom or diagonal error.

--entanglement also asks the text tower how its position-word tokens differ: by their own word
(top vs bottom) and by the other position word (top left vs top right). A causal tower sees
only earlier words, and captions name the vertical word first.

Results: docs/benchmarks.md, "Does the demo chain learn?".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from demo.attributes import BACKGROUNDS, COLORS, SHAPES, Scene
from model.edm import EDMPrecond, sample_noise
from tasks.common.generation import load_encoders
from tasks.common.generation import TextEncoder, fetch_checkpoint, load_ema_model
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


@torch.no_grad()
def entanglement(tokenizer: Any, text_model: Any, compat: str = "open_clip", length: int = 77,
                 seed: int = 0, captions: int = 40) -> dict[str, dict[str, float]]:
    """{"vertical"|"horizontal": {"own": ..., "other": ...}}: the mean L2 distance between a
    position word's output token when its own word changes (top left vs bottom left: the
    "top" and "bottom" tokens) and when only the other position word changes (top left vs top
    right: the "top" token both times), over captions in every training style."""
    from infra.mirror.corpus import STYLES
    from tasks.common.encoders import tokenize_captions

    rng = random.Random(seed)
    templates = [t for style in ("alt", "prompt", "describe") for t in STYLES[style]]
    pairs = {"vertical": {"own": ("top left", "bottom left", 0, 0),
                          "other": ("top left", "top right", 0, 0)},
             "horizontal": {"own": ("top left", "top right", 1, 1),
                            "other": ("top left", "bottom left", 1, 1)}}
    sums = {axis: {kind: 0.0 for kind in kinds} for axis, kinds in pairs.items()}
    for _ in range(captions):
        item = random_scene(rng)
        template = rng.choice(templates)
        for axis, kinds in pairs.items():
            for kind, (first, second, i, j) in kinds.items():
                texts = [template.format(c=item.color, s=item.shape, p=p, b=item.background)
                         for p in (first, second)]
                ids = tokenize_captions(tokenizer, texts, length, compat)
                hidden = text_model(input_ids=ids).last_hidden_state  # (2, length, D)
                words = [tokenizer.convert_tokens_to_ids(p.split()[k] + "</w>")
                         for p, k in ((first, i), (second, j))]
                at = [int((ids[b] == words[b]).nonzero()[0]) for b in range(2)]
                sums[axis][kind] += float((hidden[0, at[0]] - hidden[1, at[1]]).norm())
    return {axis: {kind: round(v / captions, 3) for kind, v in kinds.items()}
            for axis, kinds in sums.items()}


def position_error(want: str, got: str) -> str | None:
    """None when right, else which words are wrong: horizontal, vertical or diagonal."""
    (wv, wh), (gv, gh) = want.split(), got.split()
    kind = {(False, True): "horizontal", (True, False): "vertical", (True, True): "diagonal"}
    return kind.get((wv != gv, wh != gh))


def position_errors(samples: str) -> dict[str, int]:
    """Counts of right, horizontal, vertical, diagonal and unread over the seen-pair samples."""
    from demo.attributes import classify, parse_prompt
    from tasks.common.shards import read_manifest
    from tasks.evaluate.generate import iter_generated

    manifest = read_manifest(samples.removesuffix("/manifest.json"))
    if manifest is None:
        raise FileNotFoundError(f"no samples manifest at {samples}")
    counts = {"right": 0, "horizontal": 0, "vertical": 0, "diagonal": 0, "unread": 0}
    for image, prompt in iter_generated(manifest):
        want = parse_prompt(prompt)
        if want is None or want.held_out:
            continue
        got = classify(image.numpy())
        counts["unread" if got is None else position_error(want.position, got.position)
               or "right"] += 1
    return counts


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a stage checkpoint: s3:// prefix or local folder")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 5.0, 20.0])
    ap.add_argument("--captions", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", default=None, help="an evaluate run's samples manifest")
    ap.add_argument("--entanglement", action="store_true",
                    help="also measure the position words' tokens in the text tower")
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
    if args.entanglement:
        from tasks.common import encoders as encode_encoders

        loaded = encode_encoders.load(dataclasses.replace(params.encode, device="cpu"))
        tokens = entanglement(loaded.tokenizer, loaded.text_model, params.encode.tokenizer_compat,
                              params.encode.text_length, args.seed)
        print(json.dumps({"entanglement": tokens}))
    if args.samples:
        print(json.dumps({"samples": args.samples, "positions": position_errors(args.samples)}))
    return result


if __name__ == "__main__":
    main()
