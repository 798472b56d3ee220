"""The training step's input path: micro-batches read, decoded and collated ahead of the step.

A background thread takes each optimizer step's micro-batches from the loader into a bounded
queue, with the loader's position after them (what a checkpoint written after that step
stores). On CUDA the fp16 tensors wait in pinned memory and are copied with non_blocking, then
widened to fp32 on the device; on the CPU the thread widens them, so the step never waits on
the conversion. The thread changes when batches are read, never which.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

import torch

Batch = dict[str, Any]


class BatchSource(Protocol):
    """What the input path reads from: the latent loader, or synthetic tensors in benchmarks."""

    corrupt: dict[str, str]  # shard -> why it was skipped
    filtered: int  # samples left out by the size filter

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...


class Inputs:
    def __init__(self, source: BatchSource, accumulation: int, device: torch.device,
                 depth: int = 2) -> None:
        self.source, self.accumulation, self.device = source, accumulation, device
        self.queue: queue.Queue = queue.Queue(maxsize=depth)  # steps ready ahead of the step
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="inputs", daemon=True)
        self.thread.start()

    def _host(self, batch: Batch) -> Batch:
        tensors = {k: batch[k] for k in ("latents", "text")}
        if self.device.type == "cuda":
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        else:
            tensors = {k: v.float() for k, v in tensors.items()}
        return {**batch, **tensors}

    def _fill(self) -> None:
        try:
            while not self.stop.is_set():
                batches = [self._host(self.source.next_batch()) for _ in range(self.accumulation)]
                self._put((batches, self.source.state_dict()))
        except BaseException as err:  # handed to the training thread, which raises it
            self._put(err)

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> tuple[list[Batch], dict[str, Any]]:
        """One optimizer step's micro-batches on the device, and the position after them."""
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        batches, position = item
        return [{**b, "latents": self._device(b["latents"]), "text": self._device(b["text"])}
                for b in batches], position

    def _device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True).float()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
