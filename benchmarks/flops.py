"""Analytic training FLOPs per image of a MicroDiT preset, and the MFU a given throughput means.

    PYTHONPATH=. python benchmarks/flops.py [--preset XL_2] [--masked-images-per-s 1107]
                                            [--unmasked-images-per-s 463] [--peak-tflops 989.4]

Training costs 3 x the forward FLOPs of model/flops.py (forward + backward), which
tests/model/test_flops.py checks against torch's FlopCounterMode on the tiny preset. The default
rates are the reference's H100 numbers (75 % masked at micro-batch 256; unmasked at 128) and the
peak is an H100 SXM's dense bf16 TFLOP/s. No model is built and nothing runs on a device.
"""

from __future__ import annotations

import argparse

from model.config import preset
from model.flops import forward_flops


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="XL_2")
    ap.add_argument("--masked-images-per-s", type=float, default=1107.0, help="at 75 %% masking")
    ap.add_argument("--unmasked-images-per-s", type=float, default=463.0)
    ap.add_argument("--peak-tflops", type=float, default=989.4, help="device peak, TFLOP/s")
    return ap


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = parser().parse_args(argv)
    config = preset(args.preset)
    rows = []
    print(f"| {args.preset} mask | train GFLOPs/image | images/s | TFLOP/s | MFU |")
    print("|---|---|---|---|---|")
    for mask, rate in ((0.75, args.masked_images_per_s), (0.0, args.unmasked_images_per_s)):
        gflops = 3 * forward_flops(config, mask) / 1e9
        tflops = gflops * rate / 1e3
        rows.append({"mask_ratio": mask, "gflops": gflops, "tflops": tflops,
                     "mfu": tflops / args.peak_tflops})
        print(f"| {mask:.2f} | {gflops:.1f} | {rate:g} | {tflops:.0f} | "
              f"{100 * tflops / args.peak_tflops:.1f} % |")
    return rows


if __name__ == "__main__":
    main()
