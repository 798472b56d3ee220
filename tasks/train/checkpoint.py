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

Saves do not stall training: `snapshot` copies the state off the device (the only part the
step waits for), and a `Saver` serialises and uploads it in a background thread, one save in
flight at a time. A failed upload is retried with the project's policy (infra/retry.py), each
retry reported; one that still fails is raised in the training thread, never dropped. An error
that is not an I/O error (a bug) is raised at once, not retried. A save abandoned before its
files are all uploaded (the preemption grace period ran out) never writes latest.json.

Retention: after each save the stage keeps its newest `keep` checkpoints; the one latest.json
names (the stage's final one once it is done) and any checkpoint another stage of the run
started from are never removed.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import boto3.exceptions
import botocore.exceptions
import torch

from infra import retry, s3
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
         source: str | None = None, ema_weights: dict[str, torch.Tensor] | None = None,
         abandoned: threading.Event | None = None) -> Pointer | None:
    """Upload a full checkpoint, then move latest.json to it; `model_weights` and
    `ema_weights` replace the models' own state dicts (a snapshot, or the gathered weights of a
    sharded model; the models give only their configs then). Once `abandoned` is set no
    further file is uploaded and latest.json is left where it is (returns None)."""
    uri = s3.join(prefix, f"step-{images:012d}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_pretrained(model, root / "model", model_weights)
        save_pretrained(ema_model, root / "ema", ema_weights)
        torch.save(state, root / "train_state.pt")
        for name in FILES:
            if abandoned is not None and abandoned.is_set():
                return None
            s3.upload_file(root / name, s3.join(uri, name))
    if abandoned is not None and abandoned.is_set():
        return None
    s3.put_json(s3.join(prefix, "latest.json"),
                {"uri": uri, "step": step, "images": images, "source": source})
    return Pointer(uri=uri, step=step, images=images, source=source)


def complete(uri: str) -> bool:
    """Whether every file of the checkpoint folder is in S3."""
    return all(s3.exists(s3.join(uri, name)) for name in FILES)


def off_device(obj: Any) -> Any:
    """A copy of a state (tensors in nested dicts, lists, tuples) in CPU memory, detached from
    the training tensors, which the next optimizer step changes in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: off_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(off_device(v) for v in obj)
    return obj


@dataclass
class Snapshot:
    """One checkpoint's contents, already off the device: what a background save writes."""

    model: torch.nn.Module  # gives the config only
    weights: dict[str, torch.Tensor]
    ema_weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    step: int
    images: int
    source: str | None = None


class CheckpointFailed(RuntimeError):
    """A checkpoint could not be written even after its retries: the stage stops rather than
    train on without one."""


def io_error(err: BaseException) -> bool:
    """Worth another try: the store or the disk, not the code (a bug fails the first time)."""
    return isinstance(err, (OSError, boto3.exceptions.Boto3Error,
                            botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError))


# A whole checkpoint upload again after the per-request S3 retries (infra/s3.py) gave up.
UPLOAD_RETRIES = retry.RetryPolicy(retries=3, backoff_s=2.0, backoff_max_s=30.0)


class Saver:
    """Writes snapshots in a background thread, at most one in flight; then prunes."""

    def __init__(self, prefix: str, keep: int, policy: retry.RetryPolicy = UPLOAD_RETRIES,
                 report: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                     flush=True)) -> None:
        self.prefix, self.keep, self.policy, self.report = prefix, keep, policy, report
        self.thread: threading.Thread | None = None
        self.abandoned = threading.Event()
        self.error: BaseException | None = None
        self.pointer: Pointer | None = None  # the last checkpoint this saver completed
        self.retries = 0

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def submit(self, snap: Snapshot) -> None:
        """Start writing `snap`; waits for the save in flight first (one at a time)."""
        self.wait()
        self.thread = threading.Thread(target=self._write, args=(snap,), daemon=True,
                                       name=f"checkpoint-{snap.step}")
        self.thread.start()

    def _write(self, snap: Snapshot) -> None:
        def note(attempt: int, err: BaseException, wait: float) -> None:
            self.retries += 1
            self.report(f"checkpoint step {snap.step}: upload failed ({err}); retry {attempt} "
                        f"in {wait:.1f} s")

        try:
            pointer = retry.call(lambda: save(self.prefix, snap.model, snap.model, snap.state,
                                              snap.step, snap.images, snap.weights, snap.source,
                                              snap.ema_weights, self.abandoned),
                                 self.policy, io_error, on_retry=note)
            if pointer is not None:
                self.pointer = pointer
                prune(self.prefix, self.keep, protected=sources_of_run(self.prefix))
        except BaseException as err:  # handed to the training thread by check()
            self.error = err

    def check(self) -> None:
        """Raise the error of a save that failed (after its retries)."""
        if self.error is not None:
            err, self.error = self.error, None
            raise CheckpointFailed(f"checkpoint under {self.prefix} failed: {err}") from err

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the save in flight (up to `timeout` s); True when none is left. Raises the
        error of a failed save."""
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                return False
        self.check()
        return True

    def abandon(self) -> None:
        """Give up the save in flight: it uploads no further file and never moves latest.json."""
        self.abandoned.set()


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
