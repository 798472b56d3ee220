"""Build the demo profile's tiny models into the folders params.yaml names.

Usage: python -m tasks.models [--profile demo] [--force]
Each model is saved in Hugging Face format and later loaded with from_pretrained, so the demo
exercises the real loading code offline. The text tower and the captioner are random-init; the
VAE is trained on generated demo images (tasks/encode/tiny.py, about a minute on 2 cores), and
so is the demo_dcae profile's AutoencoderDC (much slower per step on a CPU: its decoder works
at full resolution).
Existing folders are kept unless --force, the VAE only while its recipe hash is unchanged and
the text tower while its version (tasks/encode/tiny.py, TEXT_VERSION) is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from filelock import FileLock

from infra.settings import REPO_ROOT
from tasks.params import Params, load_params


def autoencoder_builder(folder: str) -> Callable[[Path], Path]:
    """The demo recipe of an autoencoder folder, by the folder's name: tiny-dcae is the demo
    AutoencoderDC (the demo_dcae profile), any other the demo AutoencoderKL."""
    from tasks.encode.tiny import train_demo_dcae, train_demo_vae

    return train_demo_dcae if Path(folder).name == "tiny-dcae" else train_demo_vae


def builders(params: Params) -> dict[str, Callable[[Path], Path]]:
    from tasks.encode.tiny import save_tiny_text_encoder

    out: dict[str, Callable[[Path], Path]] = {
        params.encode.vae: autoencoder_builder(params.encode.vae),
        params.encode.text_encoder: save_tiny_text_encoder}
    from tasks.caption.tiny import save_tiny_llava

    if params.caption.enabled and params.caption.source != "file":  # llava or file+llava
        out[params.caption.model] = save_tiny_llava
    return out


def is_current(build: Callable[[Path], Path], path: Path) -> bool:
    """Whether the folder holds what `build` would make: the trained VAE under its recipe hash,
    any other model as soon as its config.json exists."""
    from tasks.encode.tiny import (DCAERecipe, recipe_matches, save_tiny_text_encoder,
                                   text_encoder_current, train_demo_dcae, train_demo_vae)

    if build is train_demo_vae:
        return recipe_matches(path)
    if build is train_demo_dcae:
        return recipe_matches(path, DCAERecipe())
    if build is save_tiny_text_encoder:
        return text_encoder_current(path)
    return (path / "config.json").exists()


def build_local_models(params: Params, force: bool = False) -> list[Path]:
    """Build every local-folder model of the profile that is missing or stale; returns the
    folders built."""
    built = []
    for name, build in builders(params).items():
        path = Path(name) if Path(name).is_absolute() else REPO_ROOT / name
        if not name.startswith((".", "/")):
            continue  # a hub id: loaded by from_pretrained, never generated
        # Parallel test workers (and a demo beside them) may ask for the same folder at once:
        # one builds, the others wait on the lock and then find it current.
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            if force or not is_current(build, path):
                build(path)
                built.append(path)
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    for path in build_local_models(load_params(profile=args.profile), args.force):
        print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
