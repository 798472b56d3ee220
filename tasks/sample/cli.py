"""Sample images from prompts into one grid PNG.

    python -m tasks sample --prompt "a red cube" --model DIR --n 4 --seed 0 --out grid.png

DIR is a diffusers export (model_index.json, tasks/export) or a MicroDiT folder (config.json +
model.safetensors: `python -m tasks import`, a checkpoint's ema/), which is paired with the
encoders that params.encode names (--params / --profile). Runs on CUDA when available.
Guidance and steps default to what the model was evaluated with (an export stores them; a
MicroDiT folder takes params.evaluate's); each tile of the grid is labelled with its prompt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tasks.common.device import pick_device
from tasks.common.grid import sample_grid


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """--prompt values, then the non-empty lines of --prompts-file."""
    out = list(prompts)
    if prompts_file is not None:
        out += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    return out


def load_pipeline(model: Path, params_file: Path | None, profile: str | None):
    from tasks.export import MicroDiTPipeline
    from tasks.export.export import build_pipeline
    from tasks.params import load_params

    if (model / "model_index.json").is_file():
        return MicroDiTPipeline.from_pretrained(model)
    if (model / "config.json").is_file():
        return build_pipeline(str(model), load_params(params_file, profile))
    raise FileNotFoundError(f"no model in {model}: expected model_index.json (a diffusers "
                            "export) or config.json + model.safetensors (a MicroDiT folder)")


def model_folder(model: str) -> Path:
    """A local folder, or a registered version (models:/name/version|latest) fetched from the
    MLflow registry's source in S3."""
    if model.startswith("models:/"):
        from infra.registry import fetch, resolve

        return fetch(resolve(model))
    return Path(model)


def run_model(run_id: str) -> Path:
    """The model a finished pipeline run registered, fetched from its source."""
    from infra.registry import fetch, run_source

    return fetch(run_source(run_id))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tasks sample", description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    ap.add_argument("--prompts-file", type=Path, default=None, help="one prompt per line")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model",
                       help="model folder (see above) or models:/micro-budget/<version|latest>")
    which.add_argument("--run", help="an MLflow pipeline run id: the model it registered")
    ap.add_argument("--n", type=int, default=4, help="images per prompt")
    ap.add_argument("--seed", type=int, default=0, help="initial noise seed")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance scale (default: what the model was "
                         "evaluated with, stored in the export)")
    ap.add_argument("--steps", type=int, default=None,
                    help="Heun sampler steps (default: the evaluated ones, as --guidance)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--out", type=Path, default=Path("grid.png"), help="grid PNG to write")
    ap.add_argument("--params", type=Path, default=None, help="params file (MicroDiT folders)")
    ap.add_argument("--profile", default=None, help="params profile (MicroDiT folders)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        prompts = read_prompts(args.prompt, args.prompts_file)
        if not prompts:
            raise ValueError("no prompt: give --prompt or --prompts-file")
        if args.n < 1 or (args.steps or 2) < 2 or (args.guidance or 1.0) < 1.0:
            raise ValueError("need --n >= 1, --steps >= 2 and --guidance >= 1")
        model = run_model(args.run) if args.run else model_folder(args.model)
        if not model.is_dir():
            raise FileNotFoundError(f"no model folder {args.model}")
        pipe = load_pipeline(model, args.params, args.profile)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pipe = pipe.to(pick_device(args.device))
    # Flags win; otherwise the values the model was evaluated with (tasks/export/export.py).
    steps = args.steps or pipe.config.num_inference_steps
    guidance = args.guidance if args.guidance is not None else pipe.config.guidance_scale
    batch = [p for p in prompts for _ in range(args.n)]  # prompt-major: a prompt's n together
    images = pipe(batch, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(args.seed), output_type="np").images
    tensors = [torch.from_numpy(im).permute(2, 0, 1) for im in images]  # (3, H, W) uint8
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(tensors, batch).save(args.out)
    print(f"wrote {args.out}: {len(batch)} images ({len(prompts)} prompt(s) x {args.n}) "
          f"at guidance {guidance:g}, {steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
