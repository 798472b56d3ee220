"""Continuous batching for LLaVA captions: a finished caption leaves the batch, a new image enters.

transformers' own continuous batching (generate_batch) takes token lists only, no pixel values,
so it cannot caption an image; this loop drives the model's forward with one KV cache instead.
Every row is left-padded to the batch's cache length; positions count only a row's real tokens
(as `generate` counts them from the attention mask), so each row decodes as it would alone and
greedy captions equal plain `generate`'s (tests/tasks/test_caption.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F


@dataclass
class Running:
    """The rows being decoded: their cache, mask (B, T), last positions (B,) and tokens so far."""

    cache: Any = None
    mask: torch.Tensor | None = None
    position: torch.Tensor | None = None
    last: torch.Tensor | None = None  # (B,) the token each row feeds next
    order: list[int] = field(default_factory=list)  # each row's index in the input stream
    tokens: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.order)


def _left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zeros before x along dim up to `length` (dim -2 of a KV tensor, -1 of a mask)."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(x, pad)


def _merge(run: Running, new: Running) -> Running:
    """One batch of both: rows left-padded to the longer cache, caches joined per layer."""
    if not len(run):
        return new
    length = max(run.mask.shape[1], new.mask.shape[1])
    for old_layer, new_layer in zip(run.cache.layers, new.cache.layers):
        old_layer.keys = torch.cat([_left_pad(old_layer.keys, length, -2),
                                    _left_pad(new_layer.keys, length, -2)])
        old_layer.values = torch.cat([_left_pad(old_layer.values, length, -2),
                                      _left_pad(new_layer.values, length, -2)])
    run.mask = torch.cat([_left_pad(run.mask, length, -1), _left_pad(new.mask, length, -1)])
    run.position = torch.cat([run.position, new.position])
    run.last = torch.cat([run.last, new.last])
    run.order += new.order
    run.tokens += new.tokens
    return run


def _keep(run: Running, rows: list[int]) -> None:
    """Drop the other rows, then the leading cache columns no remaining row attends to."""
    index = torch.tensor(rows, dtype=torch.long, device=run.mask.device)
    run.mask = run.mask[index]
    start = int((run.mask.sum(0) > 0).long().argmax()) if rows else 0
    run.mask = run.mask[:, start:]
    for layer in run.cache.layers:
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    run.position, run.last = run.position[index], run.last[index]
    run.order = [run.order[i] for i in rows]
    run.tokens = [run.tokens[i] for i in rows]


def _pad_rows(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad single prompts (their own padding removed) into one prefill batch."""
    ids = [r["input_ids"][r["attention_mask"].bool()] for r in rows]
    length = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, length - len(tokens):] = tokens
        mask[row, length - len(tokens):] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "pixel_values": torch.stack([r["pixel_values"] for r in rows])}


def _split(inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{k: v[i] for k, v in inputs.items()} for i in range(len(inputs["input_ids"]))]


class ContinuousDecoder:
    """Greedy decoding over a stream of prepared prompts with at most `slots` rows at once."""

    def __init__(self, model: Any, slots: int, max_new_tokens: int, eos_ids: set[int],
                 pad_id: int, device: torch.device, dtype: torch.dtype):
        self.model, self.slots, self.max_new = model, slots, max_new_tokens
        self.eos, self.pad, self.device, self.dtype = eos_ids, pad_id, device, dtype

    def _prefill(self, rows: list[dict[str, torch.Tensor]], order: list[int]) -> Running:
        batch = _pad_rows(rows, self.pad)
        mask = batch["attention_mask"].to(self.device)
        position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = self.model(input_ids=batch["input_ids"].to(self.device),
                         pixel_values=batch["pixel_values"].to(self.device, self.dtype),
                         attention_mask=mask, position_ids=position, use_cache=True,
                         logits_to_keep=1)
        last = out.logits[:, -1].argmax(-1)
        return Running(cache=out.past_key_values, mask=mask, position=position[:, -1],
                       last=last, order=order, tokens=[[t] for t in last.tolist()])

    def _step(self, run: Running) -> None:
        run.mask = F.pad(run.mask, (0, 1), value=1)
        run.position = run.position + 1
        out = self.model(input_ids=run.last[:, None], attention_mask=run.mask,
                         position_ids=run.position[:, None], past_key_values=run.cache,
                         use_cache=True, logits_to_keep=1)
        run.cache = out.past_key_values
        run.last = out.logits[:, -1].argmax(-1)
        for tokens, token in zip(run.tokens, run.last.tolist()):
            tokens.append(token)

    def _done(self, tokens: list[int]) -> bool:
        return len(tokens) >= self.max_new or tokens[-1] in self.eos

    @torch.inference_mode()
    def run(self, prompts: Iterable[dict[str, torch.Tensor]]) -> Iterator[tuple[int, list[int]]]:
        """(stream index, new token ids) per prompt, in the order captions finish."""
        queue: deque[tuple[int, dict[str, torch.Tensor]]] = deque()
        source = iter(enumerate(prompts))
        run = Running()
        exhausted = False
        while True:
            while not exhausted and len(queue) < self.slots - len(run):
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    queue.append(item)
            if queue and len(run) < self.slots:
                entering = [queue.popleft() for _ in range(min(len(queue), self.slots - len(run)))]
                run = _merge(run, self._prefill([p for _, p in entering],
                                                [i for i, _ in entering]))
            elif len(run):
                self._step(run)
            else:
                return
            finished = [i for i, tokens in enumerate(run.tokens) if self._done(tokens)]
            for i in finished:
                yield run.order[i], run.tokens[i]
            if finished:
                _keep(run, [i for i in range(len(run)) if i not in set(finished)])


def prompts_of(batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """Single prompts out of processor batches (the processor is cheaper per batch)."""
    for inputs in batches:
        yield from _split(inputs)
