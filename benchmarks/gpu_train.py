"""One training-step case of the GPU suite (ours or the reference), run beside its peers.

torch.compile of MicroDiT_XL_2 takes minutes of CPU, and the suite has four cases (ours and the
reference, 75 % masking at micro-batch 256 and none at 128) inside a few minutes of GPU time. So
the cases run as concurrent processes of one group: each compiles in its first step at the same
time as the others, then waits until every peer has compiled, then takes the group's GPU lock
and is timed alone. The timed steps therefore share the GPU with nothing but idle processes
holding their weights and Adam state (~14 GiB each at XL_2). A first step that runs out of memory
because peers ran theirs at the same moment is retried under the lock.

Timing is `benchmarks.train_step.time_steps`, as in `python -m benchmarks.train_step`; peak
memory is counted from after the first step (compilation), so it is the steady-state peak.
With --loader-shards, the same compiled step is then timed in the training loop's pattern
(one host sync per step for the loss) on fixed synthetic tensors and on batches from
`tasks.train.loader.LatentLoader` reading local shards (benchmarks.local_shards).

    python -m benchmarks.gpu_train --impl ours --mask-ratio 0.75 --batch 256 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from benchmarks import reference_train_step
from benchmarks.train_step import (BenchConfig, Step, device_peak_tflops, make_step,
                                   synthetic_batch,
                                   peak_memory_gib, synchronize, time_steps)
from model.config import preset
from model.flops import forward_flops


@dataclass(frozen=True)
class Group:
    """Peers that compile together and are timed one at a time."""

    root: Path  # shared folder: the lock file and one marker per peer
    size: int  # peers in the group
    deadline: float  # time.time() after which a case is timed without waiting for its peers

    def done_compiling(self, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"ready-{name}").touch()

    def ready_peers(self) -> int:
        return len(list(self.root.glob("ready-*")))

    def wait_for_peers(self) -> int:
        """Seconds waited for every peer to mark itself ready, or for the deadline."""
        start = time.monotonic()
        while self.ready_peers() < self.size and time.time() < self.deadline:
            time.sleep(0.5)
        return round(time.monotonic() - start)

    @contextlib.contextmanager
    def gpu(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "gpu.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def first_step(step: Step, latents: torch.Tensor, text: torch.Tensor, device: torch.device,
               group: Group, tries: int = 3) -> float:
    """Seconds of the first step (compilation included), retried under the lock on OOM."""
    start = time.perf_counter()
    for attempt in range(tries):
        try:
            lock = group.gpu() if attempt else contextlib.nullcontext()
            with lock:
                time_steps(step, latents, text, 1, device)
            return time.perf_counter() - start
        except torch.OutOfMemoryError:
            if attempt == tries - 1:
                raise
            gc.collect()
            torch.cuda.empty_cache()
    raise AssertionError("unreachable")


def profile_table(step: Step, latents: torch.Tensor, text: torch.Tensor, device: torch.device,
                  steps: int, rows: int = 15) -> str:
    """torch.profiler key_averages of a few steps, the top rows by device time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        time_steps(step, latents, text, steps, device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)


def loop_rates(step: Step, latents: torch.Tensor, text: torch.Tensor, device: torch.device,
               shards: Path, steps: int) -> dict[str, object]:
    """Steps/s in the training loop's pattern: synthetic tensors vs the latent loader."""
    from benchmarks.local_shards import local_fetch, read_local_manifest
    from tasks.train.loader import LatentLoader, LoaderConfig

    def synthetic() -> None:
        float(step(latents, text))  # the loop reads each step's loss on the host

    waited = 0.0
    while not (shards / "manifest.json").exists() and waited < 120:  # written in the background
        time.sleep(1.0)
        waited += 1.0
    manifest = read_local_manifest(shards)
    loader = LatentLoader({"bench": manifest}, LoaderConfig(
        batch_size=latents.shape[0], resolution=256, cache_bytes=1 << 40))
    fetch_s = 0.0

    def from_loader() -> None:
        nonlocal fetch_s
        start = time.perf_counter()
        batch = loader.next_batch()
        # The loader yields fp32 text; the compiled step was traced with the suite's dtype.
        lat, txt = batch["latents"].to(device), batch["text"].to(device).to(text.dtype)
        fetch_s += time.perf_counter() - start
        float(step(lat, txt))

    seconds = {"synthetic": 0.0, "loader": 0.0}
    with local_fetch():
        from_loader()  # first shard read and decoded before timing
        fetch_s = 0.0
        # A-B-B-A halves, so a drift in clocks or load over the run cancels out.
        for name in ("synthetic", "loader", "loader", "synthetic"):
            fn = synthetic if name == "synthetic" else from_loader
            start = time.perf_counter()
            for _ in range(steps // 2):
                fn()
            synchronize(device)
            seconds[name] += time.perf_counter() - start
    steps = 2 * (steps // 2)
    rates = {name: steps / s for name, s in seconds.items()}
    return {"steps": steps, "batch": latents.shape[0], "samples": manifest.samples,
            "synthetic_steps_per_s": round(rates["synthetic"], 3),
            "loader_steps_per_s": round(rates["loader"], 3),
            "loader_over_synthetic": round(rates["loader"] / rates["synthetic"], 4),
            "loader_fetch_ms_per_step": round(1e3 * fetch_s / steps, 1),
            "corrupt_shards": sorted(loader.corrupt)}


def run(args: argparse.Namespace, bench: BenchConfig, group: Group) -> dict[str, object]:
    device = torch.device(bench.device)
    model_config = preset(bench.preset)
    mask_ratio = bench.mask_ratios[0]
    latents, text = synthetic_batch(bench, model_config, device)
    result: dict[str, object] = {"impl": args.impl, "preset": bench.preset,
                                 "mask_ratio": mask_ratio, "batch": bench.batch,
                                 "dtype": bench.dtype, "compiled": bench.compile}
    if args.impl == "ours":
        step, params = make_step(model_config, bench, mask_ratio)
    else:
        step, params, patch_embed = reference_train_step.make_step(
            model_config, bench, mask_ratio, allow_timm_stand_in=args.smoke)
        result["patch_embed"] = patch_embed
    result["params_m"] = round(params / 1e6, 1)

    result["first_step_s"] = round(first_step(step, latents, text, device, group), 1)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # idle peers should hold weights and Adam state, no more
    group.done_compiling(args.name)
    result["waited_for_peers_s"] = group.wait_for_peers()
    with group.gpu():
        # Fewer than the group size: timed while a late peer may still be compiling (CPU).
        result["peers_ready_at_timing"] = group.ready_peers()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warmup_s, _ = time_steps(step, latents, text, max(bench.warmup - 1, 0), device)
        step_s, loss = time_steps(step, latents, text, bench.steps, device)
        step_s /= bench.steps
        images_per_s = bench.batch / step_s
        train_flops = 3 * forward_flops(model_config, mask_ratio, bench.caption_len)
        peak = device_peak_tflops(bench)
        achieved = train_flops * images_per_s / 1e12
        result.update({
            "step_s": round(step_s, 4), "images_per_s": round(images_per_s, 1),
            "peak_memory_gib": round(peak_memory_gib(device), 2),
            "achieved_tflops": round(achieved, 1),
            "mfu": round(achieved / peak, 4) if peak else None,
            "warmup_s": round(warmup_s, 1), "final_loss": round(float(loss), 4)})
        print(json.dumps(result), flush=True)
        write(args.json, result)
        if args.profile_steps:
            result["profile"] = profile_table(step, latents, text, device, args.profile_steps)
            write(args.json, result)
        if args.loader_shards:
            try:
                result["loader"] = loop_rates(step, latents, text, device, args.loader_shards,
                                              args.loader_steps)
            except Exception as err:  # the step's figures above are kept either way
                result["loader"] = {"error": f"{type(err).__name__}: {err}",
                                    "traceback": traceback.format_exc()}
            print(json.dumps({"loader": result["loader"]}), flush=True)
            write(args.json, result)
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def write(path: Path | None, result: dict[str, object]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, BenchConfig, Group]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=("ours", "reference"), required=True)
    ap.add_argument("--name", default=None, help="this case's name in the group")
    ap.add_argument("--preset", default="XL_2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing, the first too")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--group-dir", type=Path, default=Path("/tmp/mb-train-group"))
    ap.add_argument("--group-size", type=int, default=1)
    ap.add_argument("--group-deadline", type=float, default=None,
                    help="epoch seconds: stop waiting for peers then (default: in 300 s)")
    ap.add_argument("--profile-steps", type=int, default=0, help="profile this many steps")
    ap.add_argument("--loader-shards", type=Path, default=None,
                    help="also time the loop on these local shards (benchmarks.local_shards)")
    ap.add_argument("--loader-steps", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="CPU rehearsal: allow stand-ins")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.name = args.name or f"{args.impl}-m{args.mask_ratio}-b{args.batch}"
    bench = BenchConfig(preset=args.preset, device=args.device, batch=args.batch,
                        dtype=args.dtype, compile=args.compile, mask_ratios=(args.mask_ratio,),
                        steps=args.steps, warmup=max(args.warmup, 1), caption_len=77,
                        lr=2.4e-4, grad_clip=0.25, peak_tflops=None)
    deadline = args.group_deadline or time.time() + 300.0
    return args, bench, Group(args.group_dir, args.group_size, deadline)


def main(argv: list[str] | None = None) -> None:
    args, bench, group = parse_args(argv)
    if bench.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name() if bench.device.startswith("cuda") else "cpu"
    print(f"{args.name}: {device_name}; torch {torch.__version__}; {asdict(bench)}", flush=True)
    try:
        run(args, bench, group)
    except BaseException as err:
        # Keep what was measured before the failure (the step's figures are written first).
        done = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        write(args.json, {"impl": args.impl, "name": args.name, "mask_ratio": args.mask_ratio,
                          "batch": args.batch, **done, "error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()})
        raise
    finally:
        group.done_compiling(args.name)  # a failed peer must not hold the others back


if __name__ == "__main__":
    main()
