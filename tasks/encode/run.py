"""Encode raw shards into latent shards, one output shard per input shard (same name).

A unit of work is a list of raw shard URIs; each output shard is committed atomically through
tasks/common/shards.py, so a rerun or a retried unit skips the shards already committed.

Each image is decoded once and resized to every resolution it is encoded at, in
`encode.decode_workers` processes a window of samples ahead of the encoders; the text tower
sees each distinct caption of a shard once. Neither changes a stored value: the samples, their
batches and the posterior noise draws keep their order (tests/tasks/test_encode.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import zlib
from collections import Counter, deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm

from infra import s3
from tasks.caption.keys import captions_apply, sidecar_uri
from tasks.common.autoencoder import LatentSpace, latent_space
from tasks.common.encoders import (Encoders, encode_captions, encode_images, load,
                                   read_vae_config)
from tasks.common.images import center_crop_resize, decode_image, to_tensor
from tasks.common.keys import digest, model_fingerprint, without
from tasks.common.npy import npy_bytes
from tasks.common.shards import (LocalShard, ShardRecord, commit_shard, done_records, iter_shard,
                                 read_manifest, versioned_uri, write_manifest)
from tasks.params import Params


def raw_prefix(params: Params, dataset: str) -> str:
    return params.storage.uri(params.storage.raw_prefix, dataset)


def latent_prefix(params: Params, dataset: str) -> str:
    return params.storage.uri(params.storage.latents_prefix, dataset)


def caption_sidecar(params: Params, dataset: str,
                    shard_name: str) -> tuple[dict[str, str], str | None]:
    """Captions the caption step wrote for one raw shard, and a version of them (None: none).

    The version goes into the latent shard's record, so a shard encoded before its captions
    existed (or changed) is encoded again instead of being skipped as complete."""
    if not captions_apply(params, dataset):
        return {}, None
    uri = sidecar_uri(params, dataset, shard_name)
    if not s3.exists(uri):
        return {}, None
    data = s3.get_bytes(uri)
    return json.loads(data)["captions"], hashlib.sha256(data).hexdigest()[:16]


def resolution_plan(params: Params, dataset: str) -> dict[int, int]:
    """Resolution (px) -> smallest native short side (px) encoded at it, for one dataset.

    A dataset is encoded only at the resolutions of the training stages that read it (the
    stages declare them; encode has no list of its own), and at each only for images no stage
    at that resolution filters out (`min_short_side`): a 512 px stage never sees an upscaled
    256 px image, and nothing is encoded that no stage reads."""
    plan: dict[int, int] = {}
    for stage in params.train.stages:
        if dataset in params.train.stage_datasets(stage):
            side = plan.get(stage.resolution)
            plan[stage.resolution] = stage.min_short_side if side is None \
                else min(side, stage.min_short_side)
    return dict(sorted(plan.items()))


def encoded_datasets(params: Params) -> list[str]:
    """The encode datasets that some training stage reads (the others are skipped)."""
    return [d for d in params.encode.datasets if resolution_plan(params, d)]


def plan_key(plan: dict[int, int]) -> dict[str, int]:
    return {str(res): side for res, side in plan.items()}


# How latents are computed, not what they hold: batching, work units, placement; and the
# dataset list, which the resolution plan (in the key) already reflects.
EXECUTION_ONLY = ("batch_size", "shards_per_unit", "device", "datasets", "decode_workers",
                  "compile")


def latent_shard_name(params: Params, dataset: str, raw: ShardRecord,
                      caption_version: str | None) -> str:
    """`<raw shard>-<key>`: the key hashes the encoders and their settings, the resolution
    plan, the raw shard's sha256 and the captions' version. A change in any of them gives a
    new name, so a latent shard is never overwritten with different content."""
    enc = params.encode
    key = digest({"encode": without(enc, *EXECUTION_ONLY),
                  "models": [model_fingerprint(enc.vae), model_fingerprint(enc.text_encoder)],
                  "plan": plan_key(resolution_plan(params, dataset)),
                  "raw": raw.sha256, "captions": caption_version}, length=12)
    return f"{raw.name}-{key}"


def latent_fields(params: Params, space: LatentSpace | None = None) -> dict[str, Any]:
    """What the stored latents are, for the shard records and the manifest: the autoencoder,
    its class, channels, downscale and the scale/shift applied; the loader checks them against
    the model before training on them."""
    enc = params.encode
    space = space or latent_space(read_vae_config(enc.vae, enc.vae_subfolder))
    name = f"{enc.vae}/{enc.vae_subfolder}" if enc.vae_subfolder else enc.vae
    return {"autoencoder": name, **asdict(space)}


def raw_records(params: Params, dataset: str) -> dict[str, ShardRecord]:
    manifest = read_manifest(raw_prefix(params, dataset))
    if manifest is None:
        raise FileNotFoundError(f"no raw manifest for {dataset} at {raw_prefix(params, dataset)}:"
                                " run the download step first")
    return {s.uri: s for s in manifest.shards}


def expected_names(params: Params, dataset: str) -> list[str]:
    """The latent shard names the current params and inputs call for, one per raw shard."""
    return [latent_shard_name(params, dataset, raw, caption_sidecar(params, dataset, raw.name)[1])
            for raw in raw_records(params, dataset).values()]


def native_short_side(meta: dict[str, Any], image: Any) -> int:
    """The short side of the image as its source served it (before the download's downscale);
    the decoded image's size when the raw record does not say."""
    width, height = meta.get("original_width"), meta.get("original_height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return min(width, height)
    return min(image.size)


def plan(params: Params, dataset: str) -> list[list[str]]:
    """Raw shard URIs of a dataset in units of `shards_per_unit`."""
    uris = list(raw_records(params, dataset))
    n = params.encode.shards_per_unit
    return [uris[i:i + n] for i in range(0, len(uris), n)]


@dataclass
class ShardStats:
    encoded: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def prepare_image(jpg: bytes, meta: dict[str, Any],
                  plan: dict[int, int]) -> tuple[int, dict[int, np.ndarray]] | str:
    """Decode once and center-crop-resize to each resolution whose native-size floor the image
    meets: (native short side, {resolution: (H, W, 3) uint8}), or why it is skipped. Runs in a
    decode worker (module level, so it pickles) or inline."""
    try:
        image = decode_image(jpg)
    except (OSError, UnidentifiedImageError, ValueError):
        return "bad_image"
    short_side = native_short_side(meta, image)
    if short_side < min(plan.values()):
        return "below_min_short_side"
    return short_side, {res: np.asarray(center_crop_resize(image, res))
                        for res, min_side in plan.items() if short_side >= min_side}


def prepared(items: Iterable[dict[str, Any]], plan: dict[int, int], pool: Executor | None,
             window: int) -> Iterator[tuple[dict[str, Any], Any]]:
    """(item, prepare_image result) in input order; with a pool, up to `window` items are
    decoded ahead of the consumer (bounded: a shard's decoded images never pile up)."""
    if pool is None:
        for item in items:
            yield item, prepare_image(item["jpg"], item["meta"], plan)
        return
    ahead: deque[tuple[dict[str, Any], Future]] = deque()
    for item in items:
        ahead.append((item, pool.submit(prepare_image, item["jpg"], item["meta"], plan)))
        if len(ahead) >= window:
            head, future = ahead.popleft()
            yield head, future.result()
    while ahead:
        head, future = ahead.popleft()
        yield head, future.result()


@functools.lru_cache(maxsize=1)
def decode_pool(workers: int) -> ProcessPoolExecutor | None:
    """This process's decode workers, started once (a spawned worker imports torch, seconds)
    and shared by the units it encodes; spawned, so a CUDA context is never forked."""
    if not workers:
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _flush(enc: Encoders, params: Params, plan: dict[int, int], batch: list[dict[str, Any]],
           out: LocalShard, generator: torch.Generator, texts: dict[str, np.ndarray]) -> None:
    """Encode a batch: each image at the resolutions it was prepared at; `texts` holds the
    shard's caption embeddings by caption, so a repeated caption is encoded once."""
    latents: dict[int, dict[int, Any]] = {}
    for res in plan:
        chosen = [i for i, b in enumerate(batch) if res in b["arrays"]]
        if chosen:
            images = torch.stack([to_tensor(batch[i]["arrays"][res]) for i in chosen])
            latents[res] = dict(zip(chosen, encode_images(enc, images, generator)))
    new = [c for c in dict.fromkeys(b["caption"] for b in batch) if c not in texts]
    if new:
        texts.update(zip(new, encode_captions(enc, new, params.encode.text_length)))
    for i, b in enumerate(batch):
        sample = {f"lat{res}.npy": npy_bytes(by_index[i])
                  for res, by_index in latents.items() if i in by_index}
        meta = {**b["meta"], "native_short_side": b["short_side"]}
        sample.update({"txtemb.npy": npy_bytes(texts[b["caption"]]), "txt": b["caption"],
                       "json": meta})
        out.write(b["key"], sample)
    batch.clear()


def captioned(uri: str, captions: dict[str, str], params: Params,
              stats: ShardStats) -> Iterator[dict[str, Any]]:
    """The shard's samples with a usable caption (the others counted), image still encoded."""
    for key, sample in iter_shard(uri, stats.errors):
        caption = captions.get(key) or sample.get("txt", b"").decode("utf-8", "replace")
        caption = " ".join(caption.split())
        if len(caption) < params.encode.min_caption_chars:
            stats.skipped["empty_caption"] += 1
            continue
        yield {"key": key, "caption": caption, "jpg": sample.get("jpg", b""),
               "meta": json.loads(sample.get("json", b"{}") or b"{}")}


def encode_shard(enc: Encoders, params: Params, dataset: str, raw: ShardRecord,
                 pool: Executor | None = None) -> ShardStats:
    """Encode one raw shard into its keyed latent shard and commit it."""
    uri = raw.uri
    captions, caption_version = caption_sidecar(params, dataset, raw.name)
    name = latent_shard_name(params, dataset, raw, caption_version)
    plan = resolution_plan(params, dataset)
    stats = ShardStats()
    # Seeded per shard: a rerun of one shard gives the same posterior samples.
    generator = torch.Generator().manual_seed(params.encode.seed * 1_000_003 + zlib.crc32(name.encode()))
    batch: list[dict[str, Any]] = []
    # Caption -> embedding for this shard only: 1,000 distinct 77 x 1024 fp16 captions are ~160 MB.
    texts: dict[str, np.ndarray] = {}
    window = 4 * params.encode.batch_size
    with LocalShard() as out:
        for item, result in prepared(captioned(uri, captions, params, stats), plan, pool, window):
            if isinstance(result, str):
                stats.skipped[result] += 1
                continue
            short_side, arrays = result
            batch.append({"key": item["key"], "arrays": arrays, "caption": item["caption"],
                          "meta": item["meta"], "short_side": short_side})
            if len(batch) == params.encode.batch_size:
                _flush(enc, params, plan, batch, out, generator, texts)
            stats.encoded += 1
        if batch:
            _flush(enc, params, plan, batch, out, generator, texts)
        if stats.errors:
            stats.skipped["corrupt_tar"] += len(stats.errors)
        out.close()
        commit_shard(out.path, latent_prefix(params, dataset), name, out.samples,
                     meta={"source": uri, "skipped": dict(stats.skipped), "captions": caption_version,
                           "resolutions": list(plan), "plan": plan_key(plan),
                           "latent": latent_fields(params, enc.space)})
        out.path.unlink(missing_ok=True)
    return stats


def encode_unit(params: Params, dataset: str, uris: list[str],
                encoders: Encoders | None = None) -> dict[str, Any]:
    """Encode the raw shards of one unit, skipping those already committed."""
    done = done_records(latent_prefix(params, dataset))
    raws = raw_records(params, dataset)
    todo = []
    for uri in uris:
        raw = raws[uri]
        version = caption_sidecar(params, dataset, raw.name)[1]
        if latent_shard_name(params, dataset, raw, version) not in done:
            todo.append(raw)
    enc = encoders or (load(params.encode) if todo else None)
    encoded, skipped = 0, Counter()
    pool = decode_pool(params.encode.decode_workers) if todo else None
    for raw in tqdm(todo, desc=f"encode {dataset}", unit="shard"):
        stats = encode_shard(enc, params, dataset, raw, pool)
        encoded += stats.encoded
        skipped.update(stats.skipped)
    return {"dataset": dataset, "shards": len(uris), "shards_encoded": len(todo),
            "shards_skipped": len(uris) - len(todo), "samples_encoded": encoded,
            "skipped": dict(skipped)}


def finish(params: Params, dataset: str, units: list[dict[str, Any]]) -> dict[str, Any]:
    """Rebuild the latent manifest from committed shards and summarise the units."""
    skipped: Counter = Counter()
    for unit in units:
        skipped.update(unit["skipped"])
    manifest = write_manifest(dataset, latent_prefix(params, dataset),
                              stats={"skipped": dict(skipped),
                                     "resolutions": list(resolution_plan(params, dataset)),
                                     "plan": plan_key(resolution_plan(params, dataset)),
                                     "latent": latent_fields(params)},
                              names=expected_names(params, dataset))
    return {"dataset": dataset, "manifest": versioned_uri(manifest),
            "shards_sha256": {s.name: s.sha256 for s in manifest.shards},
            "samples": manifest.samples, "shards": len(manifest.shards),
            "samples_encoded_this_run": sum(u["samples_encoded"] for u in units),
            "skipped": dict(skipped)}


def not_read(params: Params, dataset: str) -> dict[str, Any]:
    """The summary of a dataset that no training stage reads: nothing is encoded."""
    return {"dataset": dataset, "skipped_dataset": "no train stage reads it (train.datasets / "
            "stage datasets); evaluation reads its raw shards"}


def encode_dataset(params: Params, dataset: str) -> dict[str, Any]:
    """The whole dataset in one process (CLI / DVC): every unit in turn, then the manifest."""
    if not resolution_plan(params, dataset):
        return not_read(params, dataset)
    units = plan(params, dataset)
    enc = load(params.encode) if units else None
    return finish(params, dataset, [encode_unit(params, dataset, u, enc) for u in units])
