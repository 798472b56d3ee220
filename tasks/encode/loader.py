"""The training latent loader: streams latent shards from S3, mixes datasets, drops captions.

Each dataset is an endless stream: per epoch a seeded permutation of its shards (this rank's
share of them), and within a shard a seeded permutation of its samples. A batch draws each
sample's dataset by weight (default: proportional to size), so the mix holds in expectation.
The position (epoch, shard, sample per dataset, plus the draw RNG) is a small dict: save it with
a checkpoint and `load_state_dict` resumes on the same next sample. Decoded shards are kept in an
LRU cache bounded in bytes (a small corpus stays whole in memory and is fetched once, a large one
streams); a corrupt shard is skipped and reported. The next shard of each stream is
fetched and decoded in a background thread while the current one is consumed; that changes
when shards are read, never which samples come out.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from tasks.common.shards import Manifest, iter_shard
from tasks.encode.preprocess import npy_load


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int  # samples per batch on this rank
    resolution: int  # px: which stored latents (lat<resolution>.npy) to read
    seed: int = 0
    min_short_side: int = 0  # px: skip samples whose native short side is smaller
    caption_drop: float = 0.1  # probability of a zeroed caption embedding (CFG training)
    weights: dict[str, float] = field(default_factory=dict)  # dataset -> weight; empty: by size
    # Decoded shards kept in memory, in bytes of arrays (the newest shard always stays). 1 GiB
    # holds the whole demo corpus (~10 MB): without it the demo re-fetched two 16-sample shards
    # per step, ~10 ms of a ~100 ms CPU step. A full-recipe shard of 500 samples at 256 px
    # with ViT-H tokens is ~85 MB, so 1 GiB keeps about a dozen (docs/benchmarks.md).
    cache_bytes: int = 1 << 30
    prefetch_threads: int = 2  # background shard fetches (0: fetch when needed)
    rank: int = 0
    world_size: int = 1


@dataclass
class _Stream:
    shards: list[str]
    epoch: int = 0
    shard_pos: int = 0
    sample_pos: int = 0
    order: tuple[int, list[str]] | None = None  # (epoch, this rank's shard order), memoised
    perm: tuple[tuple[int, int, int], np.ndarray] | None = None  # (epoch, shard, n), memoised


# One decoded sample: key, latents and caption embedding as stored (fp16 arrays).
Sample = tuple[str, np.ndarray, np.ndarray]


class LatentLoader:
    def __init__(self, manifests: dict[str, Manifest], config: LoaderConfig) -> None:
        if not manifests:
            raise ValueError("the latent loader needs at least one dataset manifest")
        self.config = config
        self.streams: dict[str, _Stream] = {}
        for name, manifest in sorted(manifests.items()):
            shards = [s.uri for s in manifest.shards if s.samples > 0]
            if len(shards) < config.world_size:
                raise ValueError(f"{name}: {len(shards)} non-empty shards for "
                                 f"{config.world_size} ranks")
            self.streams[name] = _Stream(shards)
        sizes = {n: float(m.samples) for n, m in manifests.items()}
        raw = {n: float(config.weights.get(n, 0.0)) for n in self.streams} if config.weights \
            else sizes
        total = sum(raw.values())
        if total <= 0:
            raise ValueError(f"dataset weights sum to {total}: {raw}")
        self.names = sorted(self.streams)
        self.probs = np.array([raw[n] / total for n in self.names])
        self.rng = np.random.default_rng([config.seed, config.rank])
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
        return {"streams": {n: [s.epoch, s.shard_pos, s.sample_pos]
                            for n, s in self.streams.items()},
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, (epoch, shard_pos, sample_pos) in state["streams"].items():
            if name in self.streams:
                stream = self.streams[name]
                stream.epoch, stream.shard_pos, stream.sample_pos = epoch, shard_pos, sample_pos
        self.rng.bit_generator.state = state["rng"]

    # --- sampling --------------------------------------------------------------------------

    def _order(self, name: str, epoch: int) -> list[str]:
        stream = self.streams[name]
        if stream.order is None or stream.order[0] != epoch:
            perm = np.random.default_rng([self.config.seed, epoch, len(name)]).permutation(
                len(stream.shards))
            ordered = [stream.shards[i] for i in perm]
            stream.order = (epoch, ordered[self.config.rank::self.config.world_size])
        return stream.order[1]

    def _decode(self, uri: str) -> tuple[list[Sample], str | None]:
        """Fetch and decode one shard (runs in a prefetch thread); (samples, first error)."""
        errors: list[str] = []
        field_name = f"lat{self.config.resolution}.npy"
        samples = []
        for key, sample in iter_shard(uri, errors):
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

    def _next_sample(self, name: str) -> Sample:
        stream = self.streams[name]
        for _ in range(10 * len(stream.shards) + 10):
            order = self._order(name, stream.epoch)
            if stream.shard_pos >= len(order):
                stream.epoch, stream.shard_pos, stream.sample_pos = stream.epoch + 1, 0, 0
                continue
            uri = order[stream.shard_pos]
            samples = [] if uri in self.corrupt else self._samples(uri)
            if stream.sample_pos >= len(samples):
                stream.shard_pos, stream.sample_pos = stream.shard_pos + 1, 0
                continue
            if stream.sample_pos == 0 and stream.shard_pos + 1 < len(order):
                self._prefetch(order[stream.shard_pos + 1])
            key = (stream.epoch, stream.shard_pos, len(samples))
            if stream.perm is None or stream.perm[0] != key:
                stream.perm = (key, np.random.default_rng([self.config.seed, *key]).permutation(
                    len(samples)))
            sample = samples[stream.perm[1][stream.sample_pos]]
            stream.sample_pos += 1
            return sample
        raise RuntimeError(f"{name}: no readable samples (corrupt shards: {self.corrupt})")

    def next_batch(self) -> dict[str, Any]:
        cfg = self.config
        picks = self.rng.choice(len(self.names), size=cfg.batch_size, p=self.probs)
        drops = self.rng.random(cfg.batch_size) < cfg.caption_drop
        samples = [self._next_sample(self.names[pick]) for pick in picks]
        # One stack and one fp16 -> fp32 conversion per batch, not one per sample.
        latents = torch.from_numpy(np.stack([s[1] for s in samples])).float()
        text = torch.from_numpy(np.stack([s[2] for s in samples])).float()
        text[torch.from_numpy(drops)] = 0.0
        return {"latents": latents, "text": text, "dropped": torch.from_numpy(drops),
                "keys": [s[0] for s in samples], "datasets": [self.names[p] for p in picks]}

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
