"""Atomic training checkpoints in S3.

Layout under s3://BUCKET/runs/<run>/<stage>/:
    step-<images:012d>/model/      model.io folder (config.json + model.safetensors)
    step-<images:012d>/ema/        the EMA weights, same format (what evaluation samples with)
    step-<images:012d>/train_state.pt   optimizer, scheduler, step, images, data position, RNG
    latest.json                    {"uri", "step", "images", "source"}: written last, so it
                                   only ever names a checkpoint whose files are all uploaded;
                                   "source" is the previous stage's checkpoint this stage
                                   started from (null for a first stage)
A worker killed mid-upload leaves latest.json on the previous checkpoint: resume loses at most
one checkpoint interval. torch.save holds only state dicts (tensors, numbers), never code.

Retention: after each save the stage keeps its newest `keep` checkpoints; the one latest.json
names (the stage's final one once it is done) and any checkpoint another stage of the run
started from are never removed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infra import s3
from model.io import save_pretrained

FILES = ("model/config.json", "model/model.safetensors", "ema/config.json",
         "ema/model.safetensors", "train_state.pt")


@dataclass(frozen=True)
class Pointer:
    uri: str
    step: int
    images: int
    source: str | None = None


def stage_prefix(bucket_uri: str, run: str, stage: str) -> str:
    return s3.join(bucket_uri, run, stage)


def latest(prefix: str) -> Pointer | None:
    uri = s3.join(prefix, "latest.json")
    if not s3.exists(uri):
        return None
    data = s3.get_json(uri)
    return Pointer(uri=data["uri"], step=int(data["step"]), images=int(data["images"]),
                   source=data.get("source"))


def save(prefix: str, model: torch.nn.Module, ema_model: torch.nn.Module,
         state: dict[str, Any], step: int, images: int,
         model_weights: dict[str, torch.Tensor] | None = None,
         source: str | None = None) -> Pointer:
    """Upload a full checkpoint, then move latest.json to it; `model_weights` replaces the
    model's own state dict (the gathered weights of a sharded model)."""
    uri = s3.join(prefix, f"step-{images:012d}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_pretrained(model, root / "model", model_weights)
        save_pretrained(ema_model, root / "ema")
        torch.save(state, root / "train_state.pt")
        for name in FILES:
            s3.upload_file(root / name, s3.join(uri, name))
    s3.put_json(s3.join(prefix, "latest.json"),
                {"uri": uri, "step": step, "images": images, "source": source})
    return Pointer(uri=uri, step=step, images=images, source=source)


def saved(prefix: str) -> list[str]:
    """The checkpoint folders of a stage, oldest first (names sort by images seen)."""
    names = {uri[len(prefix) + 1:].split("/", 1)[0] for uri in s3.list_uris(prefix + "/")}
    return [s3.join(prefix, n) for n in sorted(n for n in names if n.startswith("step-"))]


def sources_of_run(prefix: str) -> set[str]:
    """Checkpoints that some stage of the same run started from (read from their pointers)."""
    run = prefix.rsplit("/", 1)[0]
    pointers = [u for u in s3.list_uris(run + "/") if u.endswith("/latest.json")]
    return {src for src in (s3.get_json(u).get("source") for u in pointers) if src}


def prune(prefix: str, keep: int, protected: set[str] = frozenset()) -> list[str]:
    """Delete all but the newest `keep` checkpoints of a stage; returns the deleted folders.

    The checkpoint latest.json names and the `protected` ones are always kept."""
    pointer = latest(prefix)
    folders = saved(prefix)
    keep_set = set(folders[-keep:]) | set(protected) | ({pointer.uri} if pointer else set())
    removed = [f for f in folders if f not in keep_set]
    for folder in removed:
        for uri in list(s3.list_uris(folder + "/")):
            s3.delete(uri)
    return removed


def download(uri: str, dest: Path) -> Path:
    """Fetch a checkpoint folder; returns the local root (with model/, ema/, train_state.pt)."""
    for name in FILES:
        s3.download_file(s3.join(uri, name), dest / name)
    return dest


def load_state(root: Path) -> dict[str, Any]:
    # weights_only: the state holds tensors and plain containers, nothing executable.
    return torch.load(root / "train_state.pt", map_location="cpu", weights_only=True)
