"""The training latent loader: streams latent shards from S3, mixes datasets, drops captions.

Each dataset is an endless stream: per epoch a seeded permutation of its shards (this rank's
share of them), and within a shard a seeded permutation of its samples. A batch draws each
sample's dataset by weight (default: proportional to size), so the mix holds in expectation.
The position (epoch, shard, sample per dataset, plus the draw RNG) is a small dict: save it with
a checkpoint and `load_state_dict` resumes on the same next sample. Decoded shards are kept in a
bounded LRU cache; a corrupt shard is skipped and reported.
"""

from __future__ import annotations

from collections import OrderedDict
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
    caption_drop: float = 0.1  # probability of a zeroed caption embedding (CFG training)
    weights: dict[str, float] = field(default_factory=dict)  # dataset -> weight; empty: by size
    cache_shards: int = 8  # decoded shards kept in memory
    rank: int = 0
    world_size: int = 1


@dataclass
class _Stream:
    shards: list[str]
    epoch: int = 0
    shard_pos: int = 0
    sample_pos: int = 0


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
        self.cache: OrderedDict[str, list[tuple[str, dict[str, bytes]]]] = OrderedDict()
        self.corrupt: dict[str, str] = {}

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
        shards = self.streams[name].shards
        perm = np.random.default_rng([self.config.seed, epoch, len(name)]).permutation(len(shards))
        ordered = [shards[i] for i in perm]
        return ordered[self.config.rank::self.config.world_size]

    def _samples(self, uri: str) -> list[tuple[str, dict[str, bytes]]]:
        if uri in self.cache:
            self.cache.move_to_end(uri)
            return self.cache[uri]
        errors: list[str] = []
        samples = list(iter_shard(uri, errors))
        if errors:
            # A corrupt shard is skipped whole: a half-read shard would skew the position.
            self.corrupt[uri] = errors[0]
            samples = []
        self.cache[uri] = samples
        while len(self.cache) > self.config.cache_shards:
            self.cache.popitem(last=False)
        return samples

    def _next_sample(self, name: str) -> tuple[str, dict[str, bytes]]:
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
            perm = np.random.default_rng([self.config.seed, stream.epoch, stream.shard_pos,
                                          len(samples)]).permutation(len(samples))
            sample = samples[perm[stream.sample_pos]]
            stream.sample_pos += 1
            return sample
        raise RuntimeError(f"{name}: no readable samples (corrupt shards: {self.corrupt})")

    def next_batch(self) -> dict[str, Any]:
        cfg = self.config
        picks = self.rng.choice(len(self.names), size=cfg.batch_size, p=self.probs)
        drops = self.rng.random(cfg.batch_size) < cfg.caption_drop
        latents, texts, keys, sources = [], [], [], []
        for pick, drop in zip(picks, drops):
            key, sample = self._next_sample(self.names[pick])
            field_name = f"lat{cfg.resolution}.npy"
            if field_name not in sample:
                raise KeyError(f"{key}: no {field_name}; encoded resolutions do not include "
                               f"{cfg.resolution}")
            latents.append(npy_load(sample[field_name]).astype(np.float32))
            text = npy_load(sample["txtemb.npy"]).astype(np.float32)
            texts.append(np.zeros_like(text) if drop else text)
            keys.append(key)
            sources.append(self.names[pick])
        return {"latents": torch.from_numpy(np.stack(latents)),
                "text": torch.from_numpy(np.stack(texts)),
                "dropped": torch.from_numpy(drops), "keys": keys, "datasets": sources}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_batch()
