"""Where a stage's checkpoints live: keyed by everything that decides its weights.

    s3://BUCKET/<runs>/<run_name>/<stage>-<key>/

The key hashes the training params (minus how the work is laid out: GPU counts, micro-batches,
compile, logging, checkpoint cadence), this stage's row and every earlier one (a stage
continues the ones before it), and the shard digests of the latents those stages read. Change
stage 2's learning rate and stage 2 onwards get new folders and train; stage 1's folder is
found complete and kept. Change nothing and every stage is found complete.

This is the train step's data contract: evaluate and report find its checkpoints through it.
"""

from __future__ import annotations

from tasks.common.keys import digest, without
from tasks.common.shards import read_manifest, shards_digest
from tasks.params import Params
from tasks.train import checkpoint

# Layout of the work, not its result (a stage resumes on another GPU count or backend).
TRAIN_EXECUTION_ONLY = ("run_name", "micro_batch", "gpus_per_node", "nodes", "backend",
                        "compile", "compile_mode", "device", "log_every", "sample_prompts",
                        "sample_steps", "checkpoint_every_images", "checkpoint_every_min",
                        "preempt_grace_s", "max_preemptions", "keep_checkpoints", "gpu_memory_gib",
                        "shard_cache_dir", "shard_cache_gib", "stages")
STAGE_EXECUTION_ONLY = ("micro_batch", "activation_checkpointing")


def latents_digest(params: Params, dataset: str) -> str | None:
    manifest = read_manifest(params.storage.uri(params.storage.latents_prefix, dataset))
    return shards_digest(manifest) if manifest is not None else None


def stage_key(params: Params, stage_name: str) -> str:
    tp = params.train
    names = [s.name for s in tp.stages]
    upto = tp.stages[:names.index(tp.stage(stage_name).name) + 1]
    datasets = sorted({d for s in upto for d in tp.stage_datasets(s)})
    return digest({"train": without(tp, *TRAIN_EXECUTION_ONLY),
                   "stages": [without(s, *STAGE_EXECUTION_ONLY) for s in upto],
                   "latents": {d: latents_digest(params, d) for d in datasets}}, length=12)


def stage_prefix(params: Params, stage_name: str) -> str:
    """The checkpoint folder of a stage under the current params and latents."""
    return checkpoint.stage_prefix(params.storage.uri(params.storage.runs_prefix),
                                   params.train.run_name,
                                   f"{stage_name}-{stage_key(params, stage_name)}")


def final_checkpoint(params: Params) -> str:
    """The latest checkpoint of the stage evaluation scores (evaluate.stage, else the last)."""
    last = params.evaluate.stage or params.train.stages[-1].name
    prefix = stage_prefix(params, last)
    pointer = checkpoint.latest(prefix)
    if pointer is None:
        raise FileNotFoundError(f"no checkpoint under {prefix}: run the train step first")
    return pointer.uri
