"""The paper's masking ablation at micro scale: no masking, naive 75 % masking (no patch-mixer)
and deferred 75 % masking (patch-mixer first), scored on prompt-following and demo FID.

    python -m benchmarks.masking_ablation                      # CPU, the docs table (~1 h)
    python -m benchmarks.masking_ablation --device cuda --workers 5   # GPU, a few minutes
    python -m benchmarks.masking_ablation --smoke              # CPU, a minute: the path runs

Every run draws demo scenes (infra/mirror/corpus.py: one shape of one color in one quadrant on
a background), encodes them with the demo's trained VAE and random-init text tower
(`python -m tasks.models` builds both), trains a demo-width MicroDiT with the project's EDM loss,
masking and EMA, samples COCO-style prompts with the Heun sampler and scores the decoded images
with the fixed attribute classifier (demo/attributes.py) and FID against freshly drawn
real scenes (the fid-helper Inception).

Variants (reference.md, "Ablations": small-scale FID 3.79 / 16.5 / 5.03):
    none      mask 0,    patch-mixer of mixer_depth blocks
    naive     mask 0.75, no patch-mixer (masking at the input of the backbone)
    deferred  mask 0.75, patch-mixer before masking
Budgets: "steps" trains every variant the same number of steps; "flops" gives each masked
variant the steps that spend the unmasked run's training FLOPs (3 x forward, model/flops.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from demo import attributes
from infra.mirror import corpus
from model.config import MicroDiTConfig, preset
from model.edm import EDMLoss, EDMPrecond, edm_heun_sampler, sample_noise
from model.ema import EMA
from model.flops import forward_flops
from model.microdit import build_model
from model.optim import param_groups

VARIANTS = {"none": (0.0, True), "naive": (0.75, False), "deferred": (0.75, True)}
PAPER_FID = {"none": 3.79, "naive": 16.5, "deferred": 5.03}  # reference.md, small scale


@dataclass(frozen=True)
class AblationConfig:
    """One measurement's recipe; every run of the table shares it."""

    train_images: int  # distinct training scenes
    eval_prompts: int  # COCO-style prompts sampled per run (seen pairs)
    real_images: int  # real scenes on FID's real side
    steps: int  # optimizer steps of the unmasked run ("steps" budget: of every run)
    batch: int  # images per step
    lr: float  # AdamW learning rate, cosine to lr / 10 after warmup
    warmup: int  # linear warmup steps
    ema_half_life: int  # images
    sample_steps: int  # Heun steps
    guidance: float  # classifier-free guidance scale
    model: str  # MicroDiT preset (model/config.py), at the demo latents' size
    mixer_depth: int  # patch-mixer blocks of the "none" and "deferred" variants
    seeds: tuple[int, ...]
    device: str
    resolution: int = 64  # px; the demo VAE downsamples by 4
    eval_at: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)  # shares of the steps sampled+scored

    def __post_init__(self) -> None:
        if min(self.train_images, self.eval_prompts, self.steps, self.batch) <= 0:
            raise ValueError("train_images, eval_prompts, steps and batch must be > 0")


FULL = AblationConfig(train_images=4096, eval_prompts=96, real_images=256, steps=2000,
                      batch=64, lr=2e-3, warmup=50, ema_half_life=4000, sample_steps=12,
                      guidance=3.0, model="tiny", mixer_depth=2, seeds=(0, 1, 2), device="cpu")
SMOKE = dataclasses.replace(FULL, train_images=64, eval_prompts=8, real_images=16, steps=6,
                            batch=8, warmup=2, sample_steps=2, seeds=(0,))


def render(item: attributes.Scene, rng: random.Random, resolution: int) -> np.ndarray:
    """A scene drawn at a native size and resized to resolution x resolution, as the download
    and encode steps do (center square, antialiased downscale): uint8 (3, H, W)."""
    side = rng.randint(256, 512)
    image = corpus.make_image(rng, (side, side), item)
    image = image.resize((resolution, resolution), resample=3)  # PIL bicubic
    return np.asarray(image).transpose(2, 0, 1).copy()


def draw_scenes(count: int, seed: int, held_out_share: float = 0.0
                ) -> list[tuple[attributes.Scene, str]]:
    """(scene, caption) pairs in the corpus' caption styles."""
    rng = random.Random(seed)
    styles = ("alt", "prompt", "describe")
    out = []
    for _ in range(count):
        item = corpus.scene(rng, held_out_share)
        out.append((item, corpus.caption(rng, item, rng.choice(styles))))
    return out


def load_demo_encoders(device: torch.device) -> Any:
    """The demo's VAE and text tower, as the encode step loads them."""
    from tasks.common.encoders import load
    from tasks.params import load_params

    enc = load_params(profile="demo").encode
    return load(dataclasses.replace(enc, device=device.type)), enc.text_length


@torch.no_grad()
def encode_set(scenes: list[tuple[attributes.Scene, str]], seed: int, resolution: int,
               encoders: Any, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (N, 4, h, w) and caption tokens (N, L, D) of rendered scenes."""
    from tasks.common.encoders import encode_captions, encode_images

    rng = random.Random(seed + 1)
    generator = torch.Generator().manual_seed(seed)
    latents, texts = [], []
    for start in range(0, len(scenes), 64):
        chunk = scenes[start:start + 64]
        pixels = np.stack([render(item, rng, resolution) for item, _ in chunk])
        batch = torch.from_numpy(pixels).float() / 127.5 - 1.0
        latents.append(torch.from_numpy(encode_images(encoders, batch, generator)).float())
        texts.append(torch.from_numpy(encode_captions(encoders, [c for _, c in chunk],
                                                      text_length)).float())
    return torch.cat(latents), torch.cat(texts)


def model_config(cfg: AblationConfig, variant: str, text_dim: int) -> MicroDiTConfig:
    _, mixer = VARIANTS[variant]
    return preset(cfg.model, input_size=cfg.resolution // 4, caption_dim=text_dim,
                  mixer_depth=cfg.mixer_depth if mixer else 0)


def budget_steps(cfg: AblationConfig, variant: str, budget: str, text_len: int,
                 text_dim: int) -> int:
    """Steps of a variant: equal steps, or the unmasked run's FLOPs at this variant's cost."""
    if budget == "steps":
        return cfg.steps
    base = forward_flops(model_config(cfg, "none", text_dim), 0.0, text_len)
    mask, _ = VARIANTS[variant]
    own = forward_flops(model_config(cfg, variant, text_dim), mask, text_len)
    return int(round(cfg.steps * base / own))


def lr_at(cfg: AblationConfig, step: int, steps: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_run(cfg: AblationConfig, variant: str, steps: int, seed: int, latents: torch.Tensor,
              texts: torch.Tensor, device: torch.device,
              on_eval: Callable[[int, EDMPrecond], None] | None = None
              ) -> tuple[EDMPrecond, list[float]]:
    """Train one variant from scratch; returns the EMA denoiser and the loss history.
    on_eval(step, ema denoiser) runs at each cfg.eval_at share of the steps but the last."""
    evals = {max(1, round(share * steps)) for share in cfg.eval_at if share < 1.0}
    torch.manual_seed(seed)
    mask, _ = VARIANTS[variant]
    net = build_model(model_config(cfg, variant, texts.shape[-1])).to(device)
    ema = EMA(net, cfg.ema_half_life)
    optimizer = torch.optim.AdamW(param_groups(net, cfg.lr, 0.0), betas=(0.9, 0.999))
    precond, loss_fn = EDMPrecond(net), EDMLoss()
    generator = torch.Generator(device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    latents, texts = latents.to(device), texts.to(device)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step, steps)
        idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=order).to(device)
        loss = loss_fn(precond, latents[idx], texts[idx], mask, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        ema.update(net, (step + 1) * cfg.batch)
        losses.append(float(loss.detach()))
        if on_eval is not None and step + 1 in evals:
            on_eval(step + 1, EDMPrecond(ema.model))
    return EDMPrecond(ema.model), losses


@torch.no_grad()
def sample(precond: EDMPrecond, encoders: Any, texts: torch.Tensor, cfg: AblationConfig,
           device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, H, W) images for caption tokens, noise seeded per index."""
    from tasks.common.generation import decode

    side = cfg.resolution // 4
    out = []
    for start in range(0, texts.shape[0], 48):
        chunk = texts[start:start + 48].to(device)
        noise = torch.stack([sample_noise((4, side, side), 10_000 + start + i)
                             for i in range(chunk.shape[0])]).to(device)
        latents = edm_heun_sampler(precond, noise, chunk, num_steps=cfg.sample_steps,
                                   guidance=cfg.guidance)
        out.append(decode(encoders.vae, latents.to(encoders.device)).cpu())
    return torch.cat(out)


def real_images(cfg: AblationConfig) -> torch.Tensor:
    """FID's real side: freshly drawn scenes (never trained on), the same for every run."""
    rng = random.Random(5_000)
    return torch.from_numpy(np.stack([render(item, rng, cfg.resolution)
                                      for item, _ in draw_scenes(cfg.real_images, 5_000)]))


def fid_metric(real: torch.Tensor, device: torch.device) -> Any:
    """A FID metric holding the real side's features (computed once, kept across resets)."""
    from tasks.evaluate.inception import load_inception
    from tasks.evaluate.metrics import new_fid

    fid = new_fid(load_inception(device=device)).to(device)
    for start in range(0, real.shape[0], 64):
        fid.update(real[start:start + 64].to(device), real=True)
    return fid


def fid_against(fid: Any, fake: torch.Tensor, device: torch.device) -> float:
    from tasks.evaluate.metrics import fid_value

    fid.reset()  # the generated side only: new_fid keeps the real features
    for start in range(0, fake.shape[0], 64):
        fid.update(fake[start:start + 64].to(device), real=False)
    return fid_value(fid)


def one_run(cfg: AblationConfig, variant: str, budget: str, seed: int) -> dict[str, Any]:
    """Data, training, sampling and prompt-following of one (variant, budget, seed); the
    images ride along under "images" for FID (`score_fid`)."""
    device = torch.device(cfg.device)
    encoders, text_length = load_demo_encoders(device)
    train = draw_scenes(cfg.train_images, seed=100 + seed)
    latents, texts = encode_set(train, 100 + seed, cfg.resolution, encoders, text_length)
    prompts = draw_scenes(cfg.eval_prompts, seed=900)  # the same prompts for every run
    _, prompt_texts = encode_set(prompts, 900, cfg.resolution, encoders, text_length)
    steps = budget_steps(cfg, variant, budget, texts.shape[1], texts.shape[-1])
    curve: list[dict[str, Any]] = []
    saved: dict[int, np.ndarray] = {}
    eval_seconds = 0.0

    def evaluate_at(step: int, precond: EDMPrecond) -> None:
        nonlocal eval_seconds
        t0 = time.monotonic()
        images = sample(precond, encoders, prompt_texts, cfg, device)
        scores = attributes.prompt_following(
            (img.numpy(), caption) for img, (_, caption) in zip(images, prompts))
        curve.append({"step": step, "images_seen": step * cfg.batch, "fid": None,
                      "prompt_following": scores["seen"]})
        saved[step] = images.numpy()
        eval_seconds += time.monotonic() - t0

    started = time.monotonic()
    # The curve (scores against images seen) for the first seed only: its images must travel.
    precond, losses = train_run(cfg, variant, steps, seed, latents, texts, device,
                                evaluate_at if seed == cfg.seeds[0] else None)
    evaluate_at(steps, precond)
    train_s = time.monotonic() - started - eval_seconds
    images = torch.from_numpy(saved[steps])
    scores = {"seen": curve[-1]["prompt_following"]}
    return {"variant": variant, "budget": budget, "seed": seed, "steps": steps,
            "train_seconds": round(train_s, 1), "loss_first": losses[0],
            "loss_last_100": float(np.mean(losses[-100:])),
            "prompt_following": scores["seen"], "fid": None,
            "grid": grid_png(images[:16]) if seed == cfg.seeds[0] else None,
            "curve": curve, "images": saved}


def run_id(result: dict[str, Any]) -> str:
    return f"{result['variant']}-{result['budget']}-{result['seed']}"


def score_fid(cfg: AblationConfig, results: list[dict[str, Any]],
              images: dict[str, np.ndarray]) -> bool:
    """FID of each run's images against the real scenes, where the fid-helper Inception is
    installed (not on the GPU machine: its 87 MB do not travel); False when it is not."""
    from tasks.evaluate.config import FID_HELPER
    from tasks.evaluate.inception import inception_path

    try:
        inception_path(FID_HELPER)
    except FileNotFoundError as err:
        print(f"FID left for --rescore: {err}", flush=True)
        return False
    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    fid = fid_metric(real_images(cfg), device)
    for result in results:
        for point in result["curve"]:
            key = f"{run_id(result)}@{point['step']}"
            point["fid"] = fid_against(fid, torch.from_numpy(images[key]), device)
        result["fid"] = result["curve"][-1]["fid"]
    return True


def grid_png(images: torch.Tensor, columns: int = 8) -> str:
    """uint8 (N, 3, H, W) images as one PNG grid, base64 text (it travels inside the JSON)."""
    import base64
    import io

    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, image in enumerate(images.numpy()):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def runs(cfg: AblationConfig, budgets: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(variant, budget, seed) for each run; the unmasked run is the same under both budgets."""
    out = [("none", "steps", s) for s in cfg.seeds]
    for budget in budgets:
        out += [(v, budget, s) for v in ("naive", "deferred") for s in cfg.seeds]
    return out


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (variant, budget)."""
    rows = []
    keys = sorted({(r["variant"], r["budget"]) for r in results},
                  key=lambda k: (list(VARIANTS).index(k[0]), k[1]))
    for variant, budget in keys:
        group = [r for r in results if r["variant"] == variant and r["budget"] == budget]
        fid = np.array([np.nan if r["fid"] is None else r["fid"] for r in group])
        follow = np.array([r["prompt_following"]["all"] for r in group])
        rows.append({"variant": variant, "budget": budget, "seeds": len(group),
                     "steps": group[0]["steps"], "train_seconds": float(np.mean(
                         [r["train_seconds"] for r in group])), "fid_mean": float(fid.mean()),
                     "fid_std": float(fid.std(ddof=1)) if len(group) > 1 else 0.0,
                     "all_correct_mean": float(follow.mean()),
                     "all_correct_std": float(follow.std(ddof=1)) if len(group) > 1 else 0.0,
                     "paper_fid": PAPER_FID[variant]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | budget | steps | train s | all-correct (seen) | demo FID | "
             "paper FID (small scale) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['budget']} | {r['steps']} | "
                     f"{r['train_seconds']:.0f} | "
                     f"{r['all_correct_mean']:.2f} ± {r['all_correct_std']:.2f} | "
                     f"{r['fid_mean']:.1f} ± {r['fid_std']:.1f} | {r['paper_fid']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = [f"{r['variant']}\n{r['budget']}" for r in rows]
    for ax, key, title in ((axes[0], "all_correct", "prompt-following (all correct, seen)"),
                           (axes[1], "fid", "demo FID (lower is better)")):
        ax.bar(labels, [r[f"{key}_mean"] for r in rows],
               yerr=[r[f"{key}_std"] for r in rows], capsize=4, color="#4a7ab8")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_curve(results: list[dict[str, Any]], path: Path) -> None:
    """Prompt-following and demo FID against images seen, first seed of each run kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in results:
        if len(r["curve"]) < 2:
            continue
        seen = [p["images_seen"] for p in r["curve"]]
        label = f"{r['variant']} ({r['budget']})"
        axes[0].plot(seen, [p["prompt_following"]["all"] for p in r["curve"]], "o-",
                     label=label)
        if all(p["fid"] is not None for p in r["curve"]):
            axes[1].plot(seen, [p["fid"] for p in r["curve"]], "o-", label=label)
    axes[0].set_title("all correct (seen pairs) vs images seen", fontsize=9)
    axes[1].set_title("demo FID vs images seen", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None) -> tuple[AblationConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a minute on CPU: the path runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--train-images", type=int)
    p.add_argument("--model", help="MicroDiT preset")
    p.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...)")
    p.add_argument("--budgets", default="steps,flops")
    p.add_argument("--variants", default="none,naive,deferred")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel processes")
    p.add_argument("--out", type=Path, default=Path("ablation.json"),
                   help="the report; its images go to the .npz beside it, a chart to the .png")
    p.add_argument("--rescore", type=Path, help="compute FID for a report measured without "
                   "the Inception (the GPU machine), from the .npz beside it")
    p.add_argument("--eval-prompts", type=int)
    p.add_argument("--real-images", type=int)
    args = p.parse_args(argv)
    cfg = dataclasses.replace(SMOKE if args.smoke else FULL, device=args.device)
    for name in ("steps", "batch", "lr", "train_images", "model", "eval_prompts",
                 "real_images"):
        if getattr(args, name) is not None:
            cfg = dataclasses.replace(cfg, **{name: getattr(args, name)})
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    return cfg, args


def write_report(cfg: AblationConfig, results: list[dict[str, Any]], out: Path,
                 seconds: float, device: str, date: str) -> None:
    """The JSON (runs, rows, config), the bar chart beside it, the table on stdout."""
    rows = summarize(results)
    report = {"config": dataclasses.asdict(cfg), "rows": rows, "runs": results,
              "chance": attributes.chance(), "seconds": seconds, "device": device, "date": date}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report))
    plot(rows, out.with_suffix(".png"))
    plot_curve(results, out.with_suffix(".curve.png"))
    print(markdown(rows))
    print(f"chance (all correct): {attributes.chance()['all']:.3f}; wrote {out}", flush=True)


def rescore(path: Path) -> None:
    """FID for a report measured where the Inception was missing, from its saved images."""
    report = json.loads(path.read_text())
    cfg = AblationConfig(**{**report["config"], "seeds": tuple(report["config"]["seeds"]),
                            "eval_at": tuple(report["config"]["eval_at"]), "device": "cpu"})
    images = {}
    for suffix in (".npz", ".curve.npz"):
        with np.load(path.with_suffix(suffix)) as saved:
            images |= {key: saved[key] for key in saved.files}
    if not score_fid(cfg, report["runs"], images):
        raise SystemExit(1)
    write_report(dataclasses.replace(cfg, device=report["config"]["device"]), report["runs"],
                 path, report["seconds"], report["device"], report["date"])


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    if args.rescore:
        rescore(args.rescore)
        return
    wanted = set(args.variants.split(","))
    todo = [r for r in runs(cfg, tuple(args.budgets.split(","))) if r[0] in wanted]
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.jsonl")  # what finished, if time runs out

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        line = {k: v for k, v in result.items() if k not in ("images", "grid")}
        with partial.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{result['variant']:8s} {result['budget']:5s} seed {result['seed']}: "
              f"{result['steps']} steps {result['train_seconds']} s, all-correct "
              f"{result['prompt_following']['all']:.2f}", flush=True)

    results: list[dict[str, Any]] = []
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import as_completed

        with ProcessPoolExecutor(args.workers,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in as_completed([pool.submit(one_run, cfg, *r) for r in todo]):
                record(done.result())
    else:
        for variant, budget, seed in todo:
            record(one_run(cfg, variant, budget, seed))
    images = {f"{run_id(r)}@{step}": array for r in results
              for step, array in r.pop("images").items()}
    final = {f"{run_id(r)}@{r['steps']}" for r in results}
    # Two files: each must stay under the GPU machine's 16 MiB per returned file.
    np.savez_compressed(args.out.with_suffix(".npz"),
                        **{k: v for k, v in images.items() if k in final})
    np.savez_compressed(args.out.with_suffix(".curve.npz"),
                        **{k: v for k, v in images.items() if k not in final})
    score_fid(cfg, results, images)
    write_report(cfg, results, args.out, round(time.monotonic() - started, 1),
                 torch.cuda.get_device_name() if cfg.device == "cuda" else cfg.device,
                 time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main(sys.argv[1:])
