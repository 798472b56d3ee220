"""One training stage: train() -> train_step(), counted in images, resumable from S3.

Runs in every rank of a torchrun launch (or alone). Rank 0 writes checkpoints and MLflow.
The step never waits on the host: batches come ready from a background thread (inputs.py),
and the loss and gradient norm stay on the device until they are read, every log_every steps
and before each checkpoint. So a NaN loss is caught up to log_every steps after it happened,
never after a checkpoint with NaN weights was written.

Checkpoints are written in the background (checkpoint.Saver): the step waits only for the
state's copy off the device. A SIGTERM is a preemption notice: the step in progress finishes,
every rank stops at the same step (a stop flag is all-reduced each step on a CPU group, so no
rank is left waiting in a collective), a checkpoint is written within train.preempt_grace_s, and
the stage raises Preempted (launch.py exits with PREEMPTED). A save that cannot finish in the
grace period is abandoned: the stage resumes from the last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from model.config import MicroDiTConfig, preset
from model.edm import EDMLoss, EDMPrecond
from model.ema import EMA
from model.io import load_weights
from model.microdit import build_model
from model.optim import param_groups
from tasks.common import device as common_device
from tasks.common.shards import Manifest, read_manifest
from tasks.params import Params
from tasks.train import checkpoint, keys, parallel
from tasks.train.config import StageParams, TrainParams
from tasks.train.inputs import BatchSource, Inputs
from tasks.train.loader import LatentLoader, LoaderConfig
from tasks.train.schedule import lr_factor


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops rather than corrupt the checkpoints."""


# Exit status of a preempted stage (EX_TEMPFAIL, "try again later"): the launcher starts it
# again; any other non-zero status is a failure and is not retried.
PREEMPTED = 75


class Preempted(Exception):
    """A SIGTERM stopped the stage at `step`; `pointer` is the checkpoint it resumes from
    (written on the notice when `saved`, else the last complete one before it)."""

    def __init__(self, stage: str, step: int, pointer: checkpoint.Pointer | None, saved: bool,
                 save_s: float) -> None:
        self.stage, self.step, self.pointer, self.saved, self.save_s = (stage, step, pointer,
                                                                        saved, save_s)
        self.lost: dict[str, Any] = {}
        resumes = pointer.step if pointer else 0
        super().__init__(f"stage {stage} preempted at step {step}: "
                         + (f"checkpoint written in {save_s:.1f} s" if saved else
                            f"checkpoint not finished within the grace period, resumes from "
                            f"step {resumes}"))

    def record(self) -> dict[str, Any]:
        return {"preempted": True, "stage": self.stage, "step": self.step,
                "saved_on_notice": self.saved, "save_seconds": round(self.save_s, 3),
                "checkpoint": self.pointer.uri if self.pointer else None,
                "resumes_from_step": self.pointer.step if self.pointer else 0, **self.lost}


class Notice:
    """SIGTERM as a preemption notice. The handler only records when it came; the loop stops
    at the next step boundary. Installed from the main thread only (Python's rule)."""

    def __init__(self) -> None:
        self.at: float | None = None  # time.monotonic() of the first SIGTERM
        self._previous: Any = None

    def __enter__(self) -> "Notice":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.at is None:
            self.at = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Agreement:
    """What every rank must decide together at a step boundary: stop (any rank got the
    notice), save now (rank 0's wall clock says the checkpoint interval is up), or stop
    because rank 0's background save failed. One all-reduce of three ints on a gloo group:
    host memory, so it never waits on the device."""

    def __init__(self, d: "Dist") -> None:
        self.group = dist.new_group(backend="gloo") if d.world > 1 else None

    def __call__(self, stop: bool, save_due: bool, failed: bool) -> tuple[bool, bool, bool]:
        if self.group is None:
            return stop, save_due, failed
        flags = torch.tensor([stop, save_due, failed], dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        return tuple(bool(f) for f in flags.tolist())


def noise_seed(stage_seed: int, rank: int, step: int) -> int:
    """The seed of one rank's noise at one step: a resumed stage draws what an uninterrupted
    one would have, with no generator state in the checkpoint."""
    digest = hashlib.sha256(f"{stage_seed}:{rank}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group when launched by torchrun; else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def model_config(train: TrainParams, stage: StageParams) -> MicroDiTConfig:
    """The preset at this stage's latent size; positions scaled relative to the first stage."""
    base = train.stages[0].resolution
    return preset(train.model, **train.model_overrides,
                  input_size=stage.resolution // train.latent_downscale,
                  pos_interp_scale=stage.resolution / base)


def pick_device(train: TrainParams, d: Dist) -> torch.device:
    """train.device as every step reads it (tasks/common/device.py); on CUDA each rank takes
    the GPU of its local rank."""
    device = common_device.pick_device(train.device)
    if device.type != "cuda":
        return device
    torch.cuda.set_device(d.local_rank)
    return torch.device("cuda", d.local_rank)


def check_latents(manifests: dict[str, Manifest], train: TrainParams,
                  cfg: MicroDiTConfig) -> None:
    """Refuse latents of another autoencoder than the model is built for, in one line, before
    the first batch fails on a shape deep inside the model. Manifests from before the encode
    step recorded its latent fields (tasks/encode/run.py latent_fields) are read unchecked."""
    for name, manifest in manifests.items():
        latent = manifest.stats.get("latent")
        if latent is None:
            continue
        if (latent["channels"], latent["downscale"]) != (cfg.latent_channels,
                                                         train.latent_downscale):
            raise ValueError(
                f"{name} latents are {latent['channels']} channels at {latent['downscale']}x "
                f"({latent['autoencoder']}), the model takes {cfg.latent_channels} at "
                f"{train.latent_downscale}x (train.model_overrides.latent_channels, "
                "train.latent_downscale): encode again with encode.vae or fix train")


def open_loader(params: Params, stage: StageParams, micro_batch: int, d: Dist) -> LatentLoader:
    names = params.train.stage_datasets(stage)
    manifests = {}
    for name in names:
        manifest = read_manifest(params.storage.uri(params.storage.latents_prefix, name))
        if manifest is not None and manifest.samples > 0:
            manifests[name] = manifest
    if not manifests:
        raise FileNotFoundError(f"no latent manifests with samples for {list(names)}: "
                                "run the encode step first")
    check_latents(manifests, params.train, model_config(params.train, stage))
    return LatentLoader(manifests, LoaderConfig(
        batch_size=micro_batch, resolution=stage.resolution,
        seed=params.train.stage_seed(stage), min_short_side=stage.min_short_side,
        weights=params.train.dataset_weights, rank=d.rank, world_size=d.world,
        node_cache=params.train.shard_cache_dir,
        node_cache_bytes=int(params.train.shard_cache_gib * 2 ** 30)))


@dataclass
class State:
    """Everything a resume needs besides the weights."""

    step: int = 0
    images: int = 0
    losses: list[float] = field(default_factory=list)


def train_step(precond: torch.nn.Module, loss_fn: EDMLoss, optimizer: torch.optim.Optimizer,
               batches: list[dict[str, Any]], stage: StageParams,
               autocast: torch.dtype | None, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over gradient-accumulation micro-batches (already on the device);
    returns this rank's loss and the gradient norm before clipping, both left on the device."""
    optimizer.zero_grad(set_to_none=True)
    total = None
    for batch in batches:
        latents, text = batch["latents"], batch["text"]
        with torch.autocast(latents.device.type, dtype=autocast, enabled=autocast is not None):
            loss = loss_fn(precond, latents, text, stage.mask_ratio, generator) / len(batches)
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    # Clipping scales by min(1, clip / norm) on the device: no host sync.
    norm = torch.nn.utils.clip_grad_norm_(precond.parameters(), stage.grad_clip)
    optimizer.step()
    # Under FSDP the norm is a DTensor: its whole value is a collective, not a host sync.
    return total, norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (what one process on the whole global batch reports); every rank
    gets the same numbers, so a non-finite loss stops all of them together."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.to(torch.float64)
    dist.all_reduce(values)
    return values / dist.get_world_size()


class Meter:
    """Per-step losses and gradient norms kept on the device until read (one host sync)."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.losses.append(loss)
        self.norms.append(norm)

    def read(self, stage: StageParams, last_step: int) -> tuple[list[float], list[float]]:
        """The steps' losses (mean over ranks) and norms since the last read; raises on a
        non-finite loss (every rank at once: the values are all-reduced)."""
        if not self.losses:
            return [], []
        losses = global_mean(torch.stack(self.losses).float()).tolist()
        norms = torch.stack(self.norms).float().tolist()
        self.losses, self.norms = [], []
        for i, loss in enumerate(losses):
            if not math.isfinite(loss):
                step = last_step - len(losses) + i + 1
                raise NonFiniteLoss(f"loss is {loss} at step {step} of stage {stage.name}; "
                                    "stopping before the next checkpoint (lower the learning "
                                    "rate or check the data)")
        return losses, norms


Logger = Callable[[dict[str, float], int], None]


OpenSource = Callable[[Params, StageParams, int, "Dist"], BatchSource]
Step = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def train(params: Params, stage_name: str, log: Logger | None = None, *,
          open_source: OpenSource = open_loader, step: Step = train_step) -> dict[str, Any]:
    """Run (or resume) one stage to its last step; returns a summary on rank 0.

    `open_source` and `step` are the latent loader and train_step; benchmarks/train_loop.py
    swaps in synthetic batches and a fixed sleep for the device step."""
    tp = params.train
    stage = tp.stage(stage_name)
    torch.manual_seed(tp.seed)
    device = pick_device(tp, d := init_distributed("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = torch.bfloat16 if device.type == "cuda" and tp.precision == "bf16" else None
    net = build_model(model_config(tp, stage)).to(device)
    net.activation_checkpointing = stage.activation_checkpointing
    ema = EMA(net, tp.ema_half_life_images)
    micro = tp.micro_batch_of(stage)
    accum = tp.accumulation(stage, d.world)
    loader = open_source(params, stage, micro, d)
    prefix = keys.stage_prefix(params, stage.name)
    state = State()
    saved, resumed_from, source = _restore(params, stage, prefix, net, ema, loader, state)
    model = parallel.wrap(net, d.world, tp.backend, device)
    # Built after wrapping: FSDP replaces the parameters with sharded ones. Fused on the CPU
    # too: one kernel over all tensors instead of a per-tensor Python loop, which on the demo's
    # tiny model cost a few percent of each CPU step.
    optimizer = torch.optim.AdamW(param_groups(net, stage.lr, tp.weight_decay, tp.moe_lr_scale),
                                  betas=tp.betas, eps=tp.eps,
                                  fused=device.type in ("cuda", "cpu"))
    if saved is not None:
        for group in saved["param_groups"]:
            group.pop("initial_lr", None)  # the LR scheduler's key; set below for this stage
        parallel.load_optimizer_state(net, optimizer, saved)
        for group in optimizer.param_groups:
            # A new stage keeps the moments but takes its own learning rate.
            group["initial_lr"] = stage.lr * (tp.moe_lr_scale if group.get("name") == "moe"
                                              else 1.0)
    precond = EDMPrecond(model)
    if tp.compile:
        # Compile only the network; EMA, sampling and evaluation use the uncompiled modules.
        precond.net = torch.compile(model, mode=tp.compile_mode)
    # Captions are dropped by the loader (p = 0.1), not again by the loss.
    loss_fn = EDMLoss(p_mean=stage.p_mean, p_std=stage.p_std, caption_drop_prob=0.0)
    generator = torch.Generator(device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(stage, s),
                                                  last_epoch=state.step - 1) \
        if state.step else torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                             lambda s: lr_factor(stage, s))
    next_ckpt = (state.images // tp.checkpoint_every_images + 1) * tp.checkpoint_every_images
    started = last_save = time.monotonic()
    first_step = state.step
    pointer = None
    position = loader.state_dict()
    meter, since, since_images = Meter(), time.monotonic(), state.images
    if d.main:
        print(f"stage {stage.name}: {stage.steps} steps x {tp.global_batch} images "
              f"({accum} x {micro} per rank), {d.world} rank(s), resumed from step {state.step}",
              flush=True)
    saver = checkpoint.Saver(prefix, tp.keep_checkpoints)
    agree = Agreement(d)
    inputs = Inputs(loader, accum, device)
    try:
        with Notice() as notice:
            while state.step < stage.steps:
                batches, position = inputs.next()
                generator.manual_seed(noise_seed(tp.stage_seed(stage), d.rank, state.step))
                meter.add(*step(precond, loss_fn, optimizer, batches, stage, autocast, generator))
                scheduler.step()
                state.step += 1
                state.images += tp.global_batch
                final = state.step == stage.steps
                due = (d.main and tp.checkpoint_every_min > 0
                       and time.monotonic() - last_save >= tp.checkpoint_every_min * 60)
                stop, due, failed = agree(notice.at is not None, due,
                                          d.main and saver.error is not None)
                if failed:
                    saver.check()
                    raise checkpoint.CheckpointFailed(f"rank 0 could not write a checkpoint "
                                                      f"of stage {stage.name}")
                save = state.images >= next_ckpt or due or final
                # Only the last step forces an EMA update: the EMA, like the weights, never
                # depends on when checkpoints were taken.
                if state.step % tp.ema_every == 0 or final:
                    ema.update(net, state.images)
                logged = state.step % tp.log_every == 0 or state.step == 1
                if not (save or logged or stop):
                    continue
                losses, norms = meter.read(stage, state.step)
                state.losses += losses
                if d.main and logged:
                    rate = (state.images - since_images) / max(time.monotonic() - since, 1e-9)
                    since, since_images = time.monotonic(), state.images
                    print(f"step {state.step} images {state.images} loss {losses[-1]:.4f} "
                          f"{rate:.1f} img/s of {stage.steps} steps", flush=True)
                    if log:
                        log({"loss": losses[-1], "grad_norm": norms[-1], "images_per_s": rate,
                             "lr": scheduler.get_last_lr()[0]}, state.step)
                if stop and not final:
                    raise _preempt(stage, prefix, net, ema, optimizer, scheduler, position,
                                   state, d, source, saver, notice.at or time.monotonic(),
                                   tp.preempt_grace_s, started, state.step - first_step)
                if save:
                    snap = _snapshot(net, ema, optimizer, scheduler, position, state, d, source)
                    if d.main:
                        saver.submit(snap)  # waits for the save in flight: one at a time
                    last_save = time.monotonic()
                    while next_ckpt <= state.images:
                        next_ckpt += tp.checkpoint_every_images
            if d.main:
                saver.wait()  # the last step's checkpoint: the summary names it
                pointer = saver.pointer
            if d.world > 1:
                dist.barrier()  # every rank returns once the stage's checkpoint is complete
    except BaseException as err:
        if d.main and not isinstance(err, Preempted) and saver.busy:
            # A stage that fails keeps the checkpoint already on its way (it was taken
            # before the error); a preempted one already waited what its grace allowed.
            try:
                saver.wait()
            except checkpoint.CheckpointFailed as failed:
                print(failed, file=sys.stderr, flush=True)
        raise
    finally:
        inputs.close()
    seconds = time.monotonic() - started
    return {"stage": stage.name, "steps": state.step, "images": state.images,
            "final_loss": state.losses[-1] if state.losses else None,
            "checkpoint": pointer.uri if pointer else checkpoint.latest(prefix).uri,
            "resumed_from_step": resumed_from, "seconds": seconds, "gpus": d.world,
            "corrupt_shards": sorted(loader.corrupt), "losses": state.losses,
            "micro_batch": micro, "accumulation": accum, "seed": tp.stage_seed(stage),
            "below_min_short_side": loader.filtered, "checkpoint_retries": saver.retries}


def _snapshot(net, ema, optimizer, scheduler, position, state, d, source
              ) -> checkpoint.Snapshot | None:
    """The checkpoint's contents copied off the device (collectives under FSDP: every rank
    gathers); rank 0 gets the snapshot, the others None."""
    weights = parallel.model_weights(net)
    optimizer_state = parallel.optimizer_state(net, optimizer)
    if d.world > 1:
        # The data position is global: every rank must hold the same one (a shard read as
        # corrupt on one rank only would split them).
        positions = [None] * d.world
        dist.all_gather_object(positions, position)
        if any(p != position for p in positions):
            raise RuntimeError(f"ranks disagree on the data position: {positions}")
    if not d.main:
        return None
    return checkpoint.Snapshot(
        model=net, weights=checkpoint.off_device(net.state_dict() if weights is None
                                                 else weights),
        ema_weights=checkpoint.off_device(ema.model.state_dict()),
        state=checkpoint.off_device({
            "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
            "step": state.step, "images": state.images, "losses": list(state.losses),
            "loader": position, "ema_images": ema.images_seen,
            "torch_rng": torch.get_rng_state()}),
        step=state.step, images=state.images, source=source)


def _preempt(stage, prefix, net, ema, optimizer, scheduler, position, state, d, source, saver,
             notice_at: float, grace_s: float, started: float, done: int) -> Preempted:
    """Write this step's checkpoint within the grace period from the notice, else fall back to
    the last complete one; returns the Preempted to raise (every rank)."""
    deadline = notice_at + grace_s
    snap = _snapshot(net, ema, optimizer, scheduler, position, state, d, source)
    if not d.main:
        return Preempted(stage.name, state.step, None, False, 0.0)
    saved = False
    try:
        if saver.wait(max(0.0, deadline - time.monotonic())):
            saver.submit(snap)
            saved = saver.wait(max(0.0, deadline - time.monotonic()))
    except checkpoint.CheckpointFailed as err:
        print(f"preemption checkpoint failed: {err}", flush=True)
    if not saved:
        saver.abandon()
    pointer = saver.pointer if saved else checkpoint.latest(prefix)
    result = Preempted(stage.name, state.step, pointer, saved, time.monotonic() - notice_at)
    # The work lost: steps after the checkpoint it resumes from, at this attempt's step time.
    lost = state.step - (pointer.step if pointer else 0)
    result.lost = {"lost_steps": lost, "devices": d.world,
                   "lost_seconds": round(lost * (time.monotonic() - started) / max(done, 1), 3)}
    print(result, flush=True)
    return result


def _restore(params, stage, prefix, net, ema, loader, state
             ) -> tuple[dict | None, int | None, str | None]:
    """Resume this stage from its latest checkpoint, or start from the previous stage.

    Loads weights (before any sharding) and the position; returns the optimizer state to load
    once the optimizer exists (None: fresh moments), the step resumed from, and the previous
    stage's checkpoint this stage started from (kept by pruning while this stage names it)."""
    tp = params.train
    pointer = checkpoint.latest(prefix)
    source, full = (pointer.uri, True) if pointer else (None, False)
    started_from = pointer.source if pointer else None
    if pointer is None and stage.loads != "none":
        prev = tp.previous(stage.name)
        prev_ptr = checkpoint.latest(keys.stage_prefix(params, prev.name))
        if prev_ptr is None:
            raise FileNotFoundError(f"stage {stage.name} loads {prev.name}, which has no "
                                    "checkpoint yet: train it first")
        source = started_from = prev_ptr.uri
    if source is None:
        return None, None, None
    optimizer_state = None
    with tempfile.TemporaryDirectory() as tmp:
        root = checkpoint.download(source, Path(tmp))
        load_weights(net, root / "model")
        load_weights(ema.model, root / "ema")
        if full or stage.loads == "full":
            saved = checkpoint.load_state(root)
            optimizer_state = saved["optimizer"]
            ema.images_seen = int(saved["ema_images"]) if full else 0
            if full:
                state.step, state.images = int(saved["step"]), int(saved["images"])
                state.losses = list(saved["losses"])
                # One global position, whatever the number of ranks that wrote it.
                loader.load_state_dict(saved["loader"])
                torch.set_rng_state(saved["torch_rng"])
    return optimizer_state, state.step if full else 0, started_from
