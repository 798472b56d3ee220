"""The training latent loader: streams latent shards from S3, mixes datasets, drops captions.

The data order is global, the same whatever the number of ranks. Each dataset is an endless
stream: per epoch a seeded permutation of its shards, cut into windows of `window_shards`
shards, and within a window a seeded permutation of the window's samples (those that pass the
size filter). Global sample n draws its dataset by weight (default: proportional to size) and
its caption drop from (seed, n // DRAW_BLOCK), so the mix holds in expectation. A call of
`next_batch` is one global batch of batch_size x world_size samples; rank r takes the slice
[r x batch_size, (r + 1) x batch_size) of it. Every rank advances every stream by the whole
global batch, so all ranks hold the same position.

The position (the global sample count and, per dataset, epoch, window and index in the window)
is a small dict: save it with a checkpoint and `load_state_dict` resumes on the same next
global sample on any number of ranks. Decoded shards are kept in an LRU cache bounded in bytes
(a small corpus stays whole in memory and is fetched once, a large one streams); a corrupt
shard is skipped and reported. Each rank reads all shards of the current window (its slice
draws from all of them); the next window's shards are fetched and decoded in background
threads while the current one is consumed: that changes when shards are read, never which
samples come out. With `node_cache` the shard bytes come from a folder the node's ranks share
(fetched from S3 once per node). Batches are fp16 as stored; the training loop widens them.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from tasks.common.npy import npy_load
from tasks.common.shard_cache import NodeCache
from tasks.common.shards import Manifest, iter_shard, iter_tar_bytes

DRAW_BLOCK = 4096  # global samples whose dataset picks and caption drops share one RNG seed
STATE_VERSION = 2  # 1: one position per rank (before the global order); not readable


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int  # samples per batch on this rank
    resolution: int  # px: which stored latents (lat<resolution>.npy) to read
    seed: int = 0
    min_short_side: int = 0  # px: skip samples whose native short side is smaller
    caption_drop: float = 0.1  # probability of a zeroed caption embedding (CFG training)
    weights: dict[str, float] = field(default_factory=dict)  # dataset -> weight; empty: by size
    # Shards whose samples are shuffled together. Every rank decodes the whole window, so the
    # cache should hold two windows (this one and the prefetched next): 4 full-recipe shards
    # of ~85 MB each is ~340 MB per window.
    window_shards: int = 4
    # Decoded shards kept in memory, in bytes of arrays (the newest shard always stays). 1 GiB
    # holds the whole demo corpus (~10 MB): without it the demo re-fetched two 16-sample shards
    # per step, ~10 ms of a ~100 ms CPU step. A full-recipe shard of 500 samples at 256 px
    # with ViT-H tokens is ~85 MB, so 1 GiB keeps about a dozen (docs/benchmarks.md).
    cache_bytes: int = 1 << 30
    prefetch_threads: int = 2  # background shard fetches (0: fetch when needed)
    # A folder on local disk shared by the node's ranks: each shard is fetched from S3 once
    # per node instead of once per rank (tasks/common/shard_cache.py); empty: no such cache.
    node_cache: str = ""
    node_cache_bytes: int = 100 << 30  # the folder's bound, oldest fetched evicted first
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.window_shards < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need window_shards >= 1 and 0 <= rank < world_size: {self}")


# One decoded sample: key, latents and caption embedding as stored (fp16 arrays).
Sample = tuple[str, np.ndarray, np.ndarray]
# A stream position: epoch, window in the epoch, index among the window's samples (may equal
# or pass the window's length: the next window is read only when a sample of it is needed).
Position = tuple[int, int, int]


class LatentLoader:
    def __init__(self, manifests: dict[str, Manifest], config: LoaderConfig) -> None:
        if not manifests:
            raise ValueError("the latent loader needs at least one dataset manifest")
        self.config = config
        self.shards = {name: [s.uri for s in m.shards if s.samples > 0]
                       for name, m in sorted(manifests.items())}
        self.digests = {s.uri: s.sha256 for m in manifests.values() for s in m.shards}
        self.node_cache = NodeCache(config.node_cache, config.node_cache_bytes) \
            if config.node_cache else None
        sizes = {n: float(m.samples) for n, m in manifests.items()}
        raw = {n: float(config.weights.get(n, 0.0)) for n in self.shards} if config.weights \
            else sizes
        total = sum(raw.values())
        if total <= 0:
            raise ValueError(f"dataset weights sum to {total}: {raw}")
        self.names = sorted(self.shards)
        self.probs = np.array([raw[n] / total for n in self.names])
        self.sample = 0  # global samples consumed (all ranks)
        self.positions: dict[str, Position] = {n: (0, 0, 0) for n in self.names}
        self.draws: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # block -> (picks, drops)
        self.windows: dict[tuple[str, int, int], list[Sample]] = {}  # the last few, memoised
        self.orders: dict[tuple[str, int], list[str]] = {}  # (dataset, epoch) -> shard order
        self.cache: OrderedDict[str, list[Sample]] = OrderedDict()
        self.cached_bytes = 0
        self.decoded = 0  # shards fetched and decoded so far (re-fetches after eviction count)
        self.corrupt: dict[str, str] = {}
        self.pool = ThreadPoolExecutor(config.prefetch_threads, thread_name_prefix="latents") \
            if config.prefetch_threads else None
        self.pending: dict[str, Future] = {}
        self.filtered = 0  # samples below min_short_side (counted once per shard decode)

    # --- position --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "sample": self.sample,
                "streams": {n: list(p) for n, p in self.positions.items()},
                "order": {"seed": self.config.seed, "window_shards": self.config.window_shards}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("this data position predates the loader's global order (one "
                             "position per rank): it cannot be carried over. Resume the stage "
                             "with the commit that wrote it, or delete the stage's checkpoints "
                             "to restart it")
        order = {"seed": self.config.seed, "window_shards": self.config.window_shards}
        if state["order"] != order:
            raise ValueError(f"the saved data position is in another order ({state['order']}, "
                             f"this loader {order}): resuming would repeat and skip samples")
        self.sample = int(state["sample"])
        for name, (epoch, window, index) in state["streams"].items():
            if name in self.positions:
                self.positions[name] = (int(epoch), int(window), int(index))

    # --- order -----------------------------------------------------------------------------

    def _stream_seed(self, name: str) -> int:
        return zlib.crc32(name.encode())

    def _order(self, name: str, epoch: int) -> list[str]:
        key = (name, epoch)
        if key not in self.orders:
            shards = self.shards[name]
            perm = np.random.default_rng([self.config.seed, epoch, self._stream_seed(name)]) \
                .permutation(len(shards))
            self.orders = {k: v for k, v in self.orders.items() if k[0] != name}
            self.orders[key] = [shards[i] for i in perm]
        return self.orders[key]

    def _window_shards(self, name: str, epoch: int, window: int) -> list[str]:
        k = self.config.window_shards
        return self._order(name, epoch)[window * k:(window + 1) * k]

    def _windows_per_epoch(self, name: str) -> int:
        return -(-len(self.shards[name]) // self.config.window_shards)

    def _next_window(self, name: str, epoch: int, window: int) -> tuple[int, int]:
        window += 1
        return (epoch + 1, 0) if window >= self._windows_per_epoch(name) else (epoch, window)

    def _window(self, name: str, epoch: int, window: int) -> list[Sample]:
        """The window's readable samples in their seeded order."""
        key = (name, epoch, window)
        if key in self.windows:
            return self.windows[key]
        for uri in self._window_shards(name, *self._next_window(name, epoch, window)):
            self._prefetch(uri)
        samples = [s for uri in self._window_shards(name, epoch, window)
                   for s in self._samples(uri)]
        perm = np.random.default_rng(
            [self.config.seed, epoch, self._stream_seed(name), window, len(samples)]
        ).permutation(len(samples))
        # Keep this stream's last two windows: a global batch can span a window boundary.
        mine = [k for k in self.windows if k[0] == name]
        for old in mine[:-1]:
            del self.windows[old]
        self.windows[key] = [samples[i] for i in perm]
        return self.windows[key]

    def _seek(self, name: str, position: Position, ahead: int, *, take: bool) -> Position:
        """The position `ahead` samples past `position`; with `take`, one whose index lies
        inside a window with samples (reading the windows it passes)."""
        epoch, window, index = position
        index += ahead
        empty = 0
        while index > 0 or take:
            size = len(self._window(name, epoch, window))
            if index < size:
                break
            empty = empty + 1 if size == 0 else 0
            if empty > self._windows_per_epoch(name):
                raise RuntimeError(f"{name}: no readable samples (corrupt shards: "
                                   f"{self.corrupt})")
            index -= size
            epoch, window = self._next_window(name, epoch, window)
        return epoch, window, index

    def _draw(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset picks and caption drops of global samples [start, start + count)."""
        first, last = start // DRAW_BLOCK, (start + count - 1) // DRAW_BLOCK
        for block in range(first, last + 1):
            if block not in self.draws:
                rng = np.random.default_rng([self.config.seed, block])
                self.draws[block] = (
                    rng.choice(len(self.names), size=DRAW_BLOCK, p=self.probs),
                    rng.random(DRAW_BLOCK) < self.config.caption_drop)
        self.draws = {b: v for b, v in self.draws.items() if b >= first}
        picks = np.concatenate([self.draws[b][0] for b in range(first, last + 1)])
        drops = np.concatenate([self.draws[b][1] for b in range(first, last + 1)])
        offset = start - first * DRAW_BLOCK
        return picks[offset:offset + count], drops[offset:offset + count]

    # --- shards ----------------------------------------------------------------------------

    def _decode(self, uri: str) -> tuple[list[Sample], str | None]:
        """Fetch and decode one shard (runs in a prefetch thread); (samples, first error)."""
        errors: list[str] = []
        field_name = f"lat{self.config.resolution}.npy"
        samples = []
        shard = iter_tar_bytes(self.node_cache.get(uri, self.digests[uri]), errors) \
            if self.node_cache else iter_shard(uri, errors)
        for key, sample in shard:
            if self.config.min_short_side and native_short_side(key, sample) \
                    < self.config.min_short_side:
                self.filtered += 1
                continue
            if field_name not in sample:
                raise KeyError(f"{key}: no {field_name}; encoded resolutions do not include "
                               f"{self.config.resolution}")
            try:
                samples.append((key, npy_load(sample[field_name]), npy_load(sample["txtemb.npy"])))
            except (KeyError, ValueError) as err:
                errors.append(f"{key}: undecodable sample ({err})")
                break
        # A corrupt shard is skipped whole: a half-read shard would skew the position.
        return ([], errors[0]) if errors else (samples, None)

    def _prefetch(self, uri: str) -> None:
        if self.pool and uri not in self.cache and uri not in self.pending \
                and uri not in self.corrupt:
            self.pending[uri] = self.pool.submit(self._decode, uri)

    def _samples(self, uri: str) -> list[Sample]:
        if uri in self.corrupt:
            return []
        if uri in self.cache:
            self.cache.move_to_end(uri)
            return self.cache[uri]
        future = self.pending.pop(uri, None)
        samples, error = future.result() if future else self._decode(uri)
        self.decoded += 1
        if error:
            self.corrupt[uri] = error
        self.cache[uri] = samples
        self.cached_bytes += _nbytes(samples)
        while self.cached_bytes > self.config.cache_bytes and len(self.cache) > 1:
            self.cached_bytes -= _nbytes(self.cache.popitem(last=False)[1])
        return samples

    # --- batches ---------------------------------------------------------------------------

    def next_batch(self) -> dict[str, Any]:
        """This rank's slice of the next global batch (fp16 tensors, as stored)."""
        cfg = self.config
        picks, drops = self._draw(self.sample, cfg.batch_size * cfg.world_size)
        lo = cfg.rank * cfg.batch_size
        # Each of this rank's samples is the k-th of its dataset after the global batch's
        # start, k counted over the slices of the ranks before it too.
        ahead = {i: int(np.count_nonzero(picks[:lo] == i)) for i in range(len(self.names))}
        samples = []
        for pick in picks[lo:lo + cfg.batch_size]:
            name = self.names[pick]
            epoch, window, index = self._seek(name, self.positions[name], ahead[pick], take=True)
            samples.append(self._window(name, epoch, window)[index])
            ahead[pick] += 1
        for i, name in enumerate(self.names):
            self.positions[name] = self._seek(name, self.positions[name],
                                              int(np.count_nonzero(picks == i)), take=False)
        self.sample += len(picks)
        mine = drops[lo:lo + cfg.batch_size]
        # One stack per field and batch, not one copy per sample; fp16 as stored.
        latents = torch.from_numpy(np.stack([s[1] for s in samples]))
        text = torch.from_numpy(np.stack([s[2] for s in samples]))
        text[torch.from_numpy(mine)] = 0.0
        return {"latents": latents, "text": text, "dropped": torch.from_numpy(mine),
                "keys": [s[0] for s in samples],
                "datasets": [self.names[p] for p in picks[lo:lo + cfg.batch_size]]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_batch()


def _nbytes(samples: list[Sample]) -> int:
    return sum(lat.nbytes + txt.nbytes for _, lat, txt in samples)


def native_short_side(key: str, sample: dict[str, bytes]) -> int:
    """The native short side (px) that encode recorded in a latent sample's metadata."""
    side = json.loads(sample.get("json", b"{}") or b"{}").get("native_short_side")
    if not isinstance(side, int):
        raise KeyError(f"{key}: no native_short_side in its metadata; the shard predates the "
                       "size filter: encode it again")
    return side
