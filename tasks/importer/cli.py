"""Import a released reference MicroDiT checkpoint (a plain `model.dit` state dict).

    python -m tasks import dit_4_channel_37M_real_and_synthetic_data.pt --out models/microdit-37m

The state dict is read with `weights_only=True` (no pickled code runs), mapped by
model/reference_import.py and written as config.json + model.safetensors (model/io.py), which
`model.from_pretrained`, `python -m tasks sample --model DIR` and the diffusers export read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model.config import xl_2
from model.io import save_pretrained
from model.reference_import import import_reference

XL_2 = xl_2()


def import_checkpoint(checkpoint: str | Path, out: str | Path, **given: object) -> Path:
    """Map the reference state dict at `checkpoint` and save it as our pretrained folder."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{checkpoint}: not a plain state dict of tensors")
    net = import_reference(state, **given)
    return save_pretrained(net, out)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tasks import", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="reference state dict (.pt)")
    ap.add_argument("--out", type=Path, required=True, help="folder to write")
    ap.add_argument("--head-dim", type=int, default=XL_2.head_dim,
                    help="channels per attention head (not stored; XL_2 and Tiny_2: 64 and 32)")
    ap.add_argument("--multiple-of", type=int, default=XL_2.multiple_of,
                    help="FFN width rounding multiple (not stored)")
    ap.add_argument("--expert-capacity", type=float, default=XL_2.expert_capacity,
                    help="tokens per expert as a multiple of T / E (not stored)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"error: no checkpoint file {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        out = import_checkpoint(args.checkpoint, args.out, head_dim=args.head_dim,
                                multiple_of=args.multiple_of,
                                expert_capacity=args.expert_capacity)
    except (ValueError, KeyError) as err:
        print(f"error: {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    print(f"imported {args.checkpoint} -> {out} (config.json + model.safetensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
