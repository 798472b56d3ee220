"""Train step parameters: the model, the stage table, batch sizes, distribution, checkpoints."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class StageParams:
    """One row of the reference stage table (reference.md, "Training stages")."""

    name: str
    resolution: int  # px
    mask_ratio: float  # share of patches dropped after the patch-mixer
    steps: int  # optimizer steps
    lr: float  # peak learning rate
    schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = 0
    final_lr_ratio: float = 1.0  # cosine floor as a share of lr (reference: 0.33)
    grad_clip: float = 0.25
    p_mean: float = -0.6  # ln(sigma) ~ N(p_mean, p_std)
    p_std: float = 1.2
    loads: Literal["none", "full", "weights"] = "none"  # from the previous stage
    datasets: tuple[str, ...] = ()  # latent datasets; empty: TrainParams.datasets
    min_short_side: int = 0  # px: only images whose native short side is at least this
    micro_batch: int | None = None  # images per forward on one rank; null: train.micro_batch
    activation_checkpointing: bool = False  # recompute DiT blocks in backward (less memory)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"stage {self.name}: mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.steps <= 0 or self.lr <= 0 or self.grad_clip <= 0 or self.resolution <= 0:
            raise ValueError(f"stage {self.name}: steps, lr, grad_clip and resolution must be > 0")
        if not 0.0 < self.final_lr_ratio <= 1.0 or self.warmup_steps < 0:
            raise ValueError(f"stage {self.name}: need 0 < final_lr_ratio <= 1, warmup_steps >= 0")
        if self.min_short_side < 0 or (self.micro_batch is not None and self.micro_batch <= 0):
            raise ValueError(f"stage {self.name}: min_short_side must be >= 0 and micro_batch > 0")


@dataclass(frozen=True)
class TrainParams:
    run_name: str = "demo"  # checkpoints under s3://BUCKET/runs/<run_name>/<stage>/
    model: str = "demo"  # model.config preset: XL_2, Tiny_2, demo, tiny
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. caption_dim
    # px per latent cell of encode.vae (SDXL VAE: 8, DC-AE f32: 32); the preflight checks it
    # against the autoencoder's config, and the model's latent_channels with it.
    latent_downscale: int = 8
    datasets: tuple[str, ...] = ("cc3m", "sa1b", "textcaps", "journeydb", "diffusiondb")
    dataset_weights: dict[str, float] = field(default_factory=dict)  # empty: by size
    global_batch: int = 2048  # images per optimizer step, all ranks
    micro_batch: int = 256  # images per forward on one rank
    gpus_per_node: int = 1
    nodes: int = 1
    backend: Literal["ddp", "fsdp"] = "ddp"  # fsdp: fully_shard per transformer block
    compile: bool = False
    # torch.compile mode when compile is on; "default" until a GPU run measures the others.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = "default"
    precision: Literal["bf16", "fp32"] = "bf16"  # autocast dtype on GPU; CPU runs fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    moe_lr_scale: float = 0.5  # MoE parameters train at half the learning rate
    ema_half_life_images: float = 500_000.0  # images for the EMA weight of a sample to halve
    # Steps between EMA updates; each update decays by the images since the last one, so the
    # half-life in images is the same at any interval (model/ema.py).
    ema_every: int = 1
    checkpoint_every_images: int = 1_000_000
    # Minutes of wall time between checkpoints besides the image interval (0: images only):
    # what a preemption can cost in redone work, whatever a stage's step time.
    checkpoint_every_min: float = 0.0
    # s from a SIGTERM (the preemption notice) to the checkpoint being complete; a save that
    # cannot finish in it is abandoned and the stage resumes from the previous complete one.
    preempt_grace_s: float = 30.0
    max_preemptions: int = 10  # times a preempted stage is started again before it fails
    log_every: int = 100  # steps
    sample_prompts: tuple[str, ...] = ("a photo of a cat", "a red car on a street")
    sample_steps: int = 30  # Heun steps for the logged sample grid
    seed: int = 0  # run seed; each stage draws its data and noise from (seed, stage name)
    gpu_memory_gib: float | None = None  # per GPU; the preflight refuses stages above it
    keep_checkpoints: int = 2  # newest checkpoints kept per stage, besides each stage's final one
    # A local folder the ranks of a node share for latent shards, so S3 serves each shard once
    # per node, not once per rank (tasks/common/shard_cache.py); empty: every rank GETs its own.
    shard_cache_dir: str = ""
    shard_cache_gib: float = 100.0  # that folder's bound (GiB); the oldest fetched go first
    stages: tuple[StageParams, ...] = ()

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"train.stages has duplicate names: {names}")
        if self.stages and self.stages[0].loads != "none":
            raise ValueError(f"the first stage {names[0]} cannot load a previous stage")
        world = self.gpus_per_node * self.nodes
        if self.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.checkpoint_every_min < 0 or self.preempt_grace_s < 0 or self.max_preemptions < 0:
            raise ValueError("train.checkpoint_every_min, preempt_grace_s and max_preemptions "
                             f"must be >= 0, got {self.checkpoint_every_min}, "
                             f"{self.preempt_grace_s} and {self.max_preemptions}")
        if self.ema_every < 1 or self.log_every < 1:
            raise ValueError(f"train.ema_every and train.log_every must be >= 1, got "
                             f"{self.ema_every} and {self.log_every}")
        for stage in self.stages:
            micro = self.micro_batch_of(stage)
            if self.global_batch % (micro * world):
                raise ValueError(f"train.global_batch {self.global_batch} must be a multiple of "
                                 f"micro_batch x GPUs = {micro} x {world} (stage {stage.name})")
            # The patch size is the model's: the preflight checks latent side against it.
            if stage.resolution % self.latent_downscale:
                raise ValueError(f"stage {stage.name}: resolution {stage.resolution} must be a "
                                 f"multiple of train.latent_downscale {self.latent_downscale}")

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes

    def micro_batch_of(self, stage: StageParams) -> int:
        return stage.micro_batch or self.micro_batch

    def accumulation(self, stage: StageParams, world: int | None = None) -> int:
        """Micro-batches per optimizer step on each rank: the global batch stays the same.
        `world`: the ranks actually running (a stage may resume on another count), else the
        configured nodes x GPUs."""
        return self.global_batch // (self.micro_batch_of(stage) * (world or self.world))

    def stage_datasets(self, stage: StageParams) -> tuple[str, ...]:
        return stage.datasets or self.datasets

    def stage_seed(self, stage: StageParams) -> int:
        """The seed of one stage's data order and noise: the run seed and the stage name, so
        stage 2 does not replay stage 1's samples and a resumed stage keeps its own order."""
        digest = hashlib.sha256(f"{self.seed}:{stage.name}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def stage(self, name: str) -> StageParams:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(f"unknown stage {name!r}; stages: {[s.name for s in self.stages]}")

    def previous(self, name: str) -> StageParams | None:
        names = [s.name for s in self.stages]
        i = names.index(self.stage(name).name)
        return self.stages[i - 1] if i else None
