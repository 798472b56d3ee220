"""FID of a tiny image set against itself plus growing pixel noise: where it stops being monotonic.

    PYTHONPATH=. python benchmarks/fid_noise.py [--images 8] [--levels 1,2,4,6,8,12,16,32,64]

The setup of tests/tasks/test_evaluate_fid.py::test_fid_rises_monotonically_with_perturbation:
`--images` smooth random colour fields of 64 px (seed 0) are the real set; the generated set is
the same images plus `level` times one fixed standard-normal noise direction (seed 1), clamped
and rounded to uint8. FID uses the offline TorchScript Inception through torchmetrics, as the
evaluate step does. Prints one row per level for docs/evaluation.md. With far fewer images than
the 2048 feature dimensions the covariances are rank-deficient, which is what this measures.
Also prints the CPU cost of the Inception features per image and of one FID computation.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from tasks.evaluate.inception import load_inception
from tasks.evaluate.metrics import (RealStats, add_images, fid_value, new_fid, real_stats,
                                    set_real_stats)


def smooth_images(count: int) -> torch.Tensor:
    """(count, 3, 64, 64) float in [0, 255]: 8x8 random colours upsampled bilinearly."""
    low = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(low, size=64, mode="bilinear") * 255


def to_uint8(images: torch.Tensor) -> list[torch.Tensor]:
    return list(images.clamp(0, 255).round().to(torch.uint8))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="images in each set")
    ap.add_argument("--levels", default="1,2,4,6,8,12,16,32,64",
                    help="noise standard deviations, in uint8 grey levels, comma-separated")
    return ap


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    args = parser().parse_args(argv)
    levels = [float(x) for x in args.levels.split(",")]
    torch.set_num_threads(1)
    inception = load_inception()
    images = smooth_images(args.images)
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    fid = new_fid(inception)
    add_images(fid, to_uint8(images), real=True, batch_size=4)
    cached = real_stats(fid).to_bytes()

    rows, feature_s, fid_s = [], [], []
    for level in levels:
        fid = new_fid(inception)
        set_real_stats(fid, RealStats.from_bytes(cached))
        start = time.perf_counter()
        add_images(fid, to_uint8(images + level * direction), real=False,
                   batch_size=args.images)
        feature_s.append((time.perf_counter() - start) / args.images)
        start = time.perf_counter()
        rows.append((level, fid_value(fid)))
        fid_s.append(time.perf_counter() - start)
    print(f"{datetime.date.today()}: {args.images} images, 64 px, one thread; Inception "
          f"{statistics.median(feature_s):.2f} s per image, one FID computation "
          f"{statistics.median(fid_s):.1f} s (medians over the levels)")
    print("| noise std | FID | vs previous level |")
    print("|---|---|---|")
    for i, (level, value) in enumerate(rows):
        trend = "" if i == 0 else ("higher" if value > rows[i - 1][1] else "not higher")
        print(f"| {level:g} | {value:.1f} | {trend} |")
    return rows


if __name__ == "__main__":
    main()
