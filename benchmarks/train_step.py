"""Time a full MicroDiT training step: forward, EDM loss, backward, grad clip, fused AdamW.

On CUDA the defaults are the reference measurement (reference.md, "Cost"): XL_2 at 256 px,
bf16 autocast over fp32 weights, torch.compile, micro-batch 256, with 75 % masking and without.
Reports images/s, peak GPU memory and model FLOP utilisation (analytic matmul FLOPs, 3x the
forward pass, over the GPU's dense bf16 peak). On the CPU it is a smoke test:

    python -m benchmarks.train_step --preset tiny --device cpu --steps 3

The demo profile's model (params.yaml `demo.train`: preset tiny on 16x16 latents and the tiny
text tower's 64-d tokens, 24 of them) at its batch, unmasked:

    python -m benchmarks.train_step --preset tiny --override input_size=16 caption_dim=64 \
        --caption-len 24 --batch 32 --mask-ratios 0 --warmup 3
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from model.config import MicroDiTConfig, preset
from model.edm import EDMLoss, EDMPrecond
from model.flops import forward_flops
from model.microdit import build_model, count_parameters
from model.optim import param_groups

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


@dataclass(frozen=True)
class BenchConfig:
    preset: str  # model preset name (model.config.PRESETS)
    device: str  # "cuda" or "cpu"
    batch: int  # micro-batch, images per step
    dtype: str  # autocast dtype: "bf16" or "fp32" (no autocast)
    compile: bool  # torch.compile the forward pass and loss
    mask_ratios: tuple[float, ...]  # one measurement per ratio
    steps: int  # timed steps per ratio
    warmup: int  # untimed steps first (compilation happens here)
    caption_len: int  # caption tokens per image
    lr: float  # AdamW learning rate (stage 1)
    grad_clip: float  # max global grad norm (stage 1)
    peak_tflops: float | None  # device peak for MFU; None: look up by device name
    overrides: tuple[tuple[str, int], ...] = ()  # model config fields replaced in the preset

    def __post_init__(self) -> None:
        if self.batch <= 0 or self.steps <= 0 or self.warmup < 0 or self.caption_len <= 0:
            raise ValueError("batch, steps and caption_len must be > 0, warmup >= 0")
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype must be bf16 or fp32, got {self.dtype!r}")
        if any(not 0.0 <= r < 1.0 for r in self.mask_ratios):
            raise ValueError(f"mask ratios must be in [0, 1), got {self.mask_ratios}")



def synthetic_batch(bench: "BenchConfig", model_config: MicroDiTConfig, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random latents and caption tokens of one micro-batch, text in the step's dtype."""
    generator = torch.Generator(device=device).manual_seed(0)
    side = model_config.input_size
    latents = torch.randn(bench.batch, model_config.latent_channels, side, side, device=device,
                          generator=generator)
    text_dtype = torch.bfloat16 if bench.dtype == "bf16" else torch.float32
    text = torch.randn(bench.batch, bench.caption_len, model_config.caption_dim, device=device,
                       generator=generator).to(text_dtype)
    return latents, text


def optimizer_step(compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   grad_clip: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One training step around a loss function: backward, clip, update, clear; ours and the
    reference's benchmarks time the same step this way."""

    def step(latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        loss = compute(latents, text)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step

def parse_args(argv: list[str] | None) -> tuple[BenchConfig, Path | None]:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="XL_2" if cuda else "tiny")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="256 on CUDA, 8 on CPU")
    parser.add_argument("--dtype", default=None, help="bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="on by default on CUDA")
    parser.add_argument("--mask-ratios", default="0.75,0")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=None, help="5 on CUDA, 1 on CPU")
    parser.add_argument("--caption-len", type=int, default=77)
    parser.add_argument("--lr", type=float, default=2.4e-4)
    parser.add_argument("--grad-clip", type=float, default=0.25)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--override", nargs="*", default=[], metavar="FIELD=INT",
                        help="replace integer model config fields, e.g. input_size=16")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    config = BenchConfig(
        preset=args.preset, device=args.device,
        batch=args.batch or (256 if on_cuda else 8),
        dtype=args.dtype or ("bf16" if on_cuda else "fp32"),
        compile=on_cuda if args.compile is None else args.compile,
        mask_ratios=tuple(float(r) for r in args.mask_ratios.split(",")),
        steps=args.steps, warmup=(5 if on_cuda else 1) if args.warmup is None else args.warmup,
        caption_len=args.caption_len, lr=args.lr, grad_clip=args.grad_clip,
        peak_tflops=args.peak_tflops, overrides=parse_overrides(args.override))
    return config, args.json


def parse_overrides(pairs: list[str]) -> tuple[tuple[str, int], ...]:
    """["input_size=16", ...] -> (("input_size", 16), ...); preset() validates the fields."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise ValueError(f"expected FIELD=INT, got {pair!r}")
        out.append((key, int(value)))
    return tuple(out)


def device_peak_tflops(bench: BenchConfig) -> float | None:
    if bench.peak_tflops is not None:
        return bench.peak_tflops
    if not bench.device.startswith("cuda") or bench.dtype != "bf16":
        return None
    name = torch.cuda.get_device_name(torch.device(bench.device))
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_step(model_config: MicroDiTConfig, bench: BenchConfig,
              mask_ratio: float) -> tuple[Step, int]:
    """A closure running one optimizer step on a batch, and the model's parameter count."""
    device = torch.device(bench.device)
    precond = EDMPrecond(build_model(model_config).to(device)).train()
    loss_fn = EDMLoss()
    optimizer = torch.optim.AdamW(param_groups(precond.net, bench.lr, 0.1), betas=(0.9, 0.999),
                                  eps=1e-8, fused=True)  # as tasks/train/loop.py
    autocast_dtype = torch.bfloat16 if bench.dtype == "bf16" else torch.float32

    def forward_loss(latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=bench.dtype == "bf16"):
            return loss_fn(precond, latents, text, mask_ratio)

    compute = torch.compile(forward_loss) if bench.compile else forward_loss

    return optimizer_step(compute, precond, optimizer, bench.grad_clip), \
        count_parameters(precond.net)


def time_steps(step: Step, latents: torch.Tensor, text: torch.Tensor, steps: int,
               device: torch.device) -> tuple[float, torch.Tensor | None]:
    """(seconds for `steps` back-to-back steps on one batch, the last loss). The device is
    synchronised once at the end, so the host queues steps ahead as a training loop would."""
    loss = None
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(latents, text)
    synchronize(device)
    return time.perf_counter() - start, loss


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def run_case(bench: BenchConfig, mask_ratio: float) -> dict[str, object]:
    device = torch.device(bench.device)
    model_config = preset(bench.preset, **dict(bench.overrides))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    latents, text = synthetic_batch(bench, model_config, device)
    step, params = make_step(model_config, bench, mask_ratio)

    warmup_s, _ = time_steps(step, latents, text, bench.warmup, device)
    step_s, loss = time_steps(step, latents, text, bench.steps, device)
    step_s /= bench.steps
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at mask ratio {mask_ratio}")

    images_per_s = bench.batch / step_s
    train_flops = 3 * forward_flops(model_config, mask_ratio, bench.caption_len)
    achieved_tflops = train_flops * images_per_s / 1e12
    peak = device_peak_tflops(bench)
    result = {
        "preset": bench.preset, "params_m": round(params / 1e6, 1), "mask_ratio": mask_ratio,
        "batch": bench.batch, "dtype": bench.dtype, "compiled": bench.compile,
        "step_s": round(step_s, 4), "images_per_s": round(images_per_s, 1),
        "peak_memory_gib": round(peak_memory_gib(device), 2),
        "train_gflops_per_image": round(train_flops / 1e9, 2),
        "achieved_tflops": round(achieved_tflops, 2),
        "mfu": round(achieved_tflops / peak, 4) if peak else None,
        "warmup_s": round(warmup_s, 1), "final_loss": round(loss.item(), 4),
    }
    del step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def describe_device(bench: BenchConfig) -> str:
    if bench.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(bench.device))
    return f"cpu ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    bench, json_path = parse_args(argv)
    if bench.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"device: {describe_device(bench)}; torch {torch.__version__}; {asdict(bench)}",
          flush=True)
    results = []
    for ratio in bench.mask_ratios:
        result = run_case(bench, ratio)
        print(json.dumps(result), flush=True)
        results.append(result)
    if json_path is not None:
        report = {"device": describe_device(bench), "torch": torch.__version__,
                  "bench": asdict(bench), "results": results}
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
