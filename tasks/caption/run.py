"""Caption the samples of raw shards that have none, one sidecar per shard.

The raw shards stay untouched: captions go to s3://BUCKET/raw/<dataset>/captions/<shard>.json
(`{"captions": {key: text}, "failed": {key: reason}, "stats": ...}`), written in one PUT once
the whole shard is done, so a sidecar is either complete or absent and a rerun skips it. The
encode step reads the sidecar by sample key.
"""

from __future__ import annotations

import functools
import json
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from infra import s3
from tasks.caption.config import CaptionParams
from tasks.caption.keys import caption_key, sidecar_uri
from tasks.caption.text import clean, garbage_reason
from tasks.common.fetch import open_stream, read_bytes
from tasks.common.images import decode_image
from tasks.common.shards import iter_shard, read_manifest
from tasks.params import Params


def raw_prefix(params: Params, dataset: str) -> str:
    return params.storage.uri(params.storage.raw_prefix, dataset)


def shard_name(uri: str) -> str:
    return uri.rsplit("/", 1)[1].removesuffix(".tar")


def image_id(value: str) -> str:
    """`sa_123.jpg`, `images/sa_123` and `123` all name SA-1B image 123."""
    stem = PurePosixPath(str(value)).name.split(".", 1)[0]
    return stem.removeprefix("sa_")


@dataclass
class Pending:
    """Samples of one shard still without a caption."""

    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    jpgs: list[bytes | None] = field(default_factory=list)  # encoded; None: the sample has none
    images: list[Image.Image] = field(default_factory=list)  # decoded by `decode_pending`


@dataclass
class ShardResult:
    captions: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason
    counts: Counter = field(default_factory=Counter)

    def to_json(self, name: str, source: str, params: CaptionParams) -> dict[str, Any]:
        return {"shard": name, "source": source, "generator": describe(params),
                "caption_key": caption_key(params),
                "captions": self.captions, "failed": self.failed, "stats": dict(self.counts)}


def describe(params: CaptionParams) -> dict[str, Any]:
    if params.source == "file":
        return {"source": "file", "captions_file": params.captions_file}
    llava = {"model": params.model, "prompt": params.prompt,
             "max_new_tokens": params.max_new_tokens}
    if params.source == "file+llava":
        return {"source": "file+llava", "captions_file": params.captions_file, **llava}
    return {"source": "llava", **llava}


def read_samples(uri: str, result: ShardResult) -> Iterator[tuple[str, dict[str, bytes]]]:
    errors: list[str] = []
    yield from iter_shard(uri, errors)
    result.counts["corrupt_tar"] += len(errors)


def collect(uri: str, params: CaptionParams, result: ShardResult) -> Pending:
    """Keep existing captions; queue the rest (with their image bytes) for captioning."""
    pending = Pending()
    for key, sample in read_samples(uri, result):
        result.counts["samples"] += 1
        existing = " ".join(sample.get("txt", b"").decode("utf-8", "replace").split())
        if existing:
            result.captions[key] = existing
            result.counts["had_caption"] += 1
            continue
        meta = json.loads(sample.get("json", b"{}") or b"{}")
        pending.keys.append(key)
        pending.ids.append(image_id(meta.get("source_id") or key.split("-", 1)[-1]))
        pending.jpgs.append(sample.get("jpg") if params.source != "file" else None)
    return pending


def decode_pending(pending: Pending, result: ShardResult) -> Pending:
    """The samples whose image decodes, with their images; the others fail as bad_image."""
    out = Pending()
    for key, ident, jpg in zip(pending.keys, pending.ids, pending.jpgs):
        try:
            out.images.append(decode_image(jpg))
        except (TypeError, OSError, UnidentifiedImageError, ValueError):
            result.failed[key] = "bad_image"
            continue
        out.keys.append(key)
        out.ids.append(ident)
    return out


def accept(result: ShardResult, key: str, raw: str, params: CaptionParams) -> str | None:
    """Store a usable caption; return the garbage reason otherwise."""
    text = clean(raw, params.prompt)
    reason = garbage_reason(text, params.min_chars, params.max_repeat_share)
    if reason is None:
        result.captions[key] = text
    return reason


def caption_with_llava(captioner: Any, pending: Pending, params: CaptionParams,
                       result: ShardResult, seed: int) -> None:
    from tasks.caption.llava import caption_images, generate, prepare

    size = params.batch_size
    retry: list[int] = []
    progress = tqdm(total=len(pending.keys), desc="caption", unit="img", leave=False)
    for i, raw in enumerate(caption_images(captioner, pending.images)):
        if accept(result, pending.keys[i], raw, params) is not None:
            retry.append(i)
        progress.update(1)
    progress.close()
    result.counts["retried"] += len(retry)
    # The one retry samples (a second greedy pass would repeat the same text).
    for start in range(0, len(retry), size):
        chunk = retry[start:start + size]
        inputs = prepare(captioner, [pending.images[i] for i in chunk])
        for i, raw in zip(chunk, generate(captioner, inputs, sample=True, seed=seed + start)):
            reason = accept(result, pending.keys[i], raw, params)
            if reason is not None:
                result.failed[pending.keys[i]] = reason


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def caption_tar(location: str, timeout_s: float) -> dict[str, str]:
    """PixArt-alpha/SAM-LLaVA-Captions10M's form: a tar.gz of sa_<id>.txt, one caption each,
    read as a stream (tar mode r|*), so the 2.2 GB archive is never unpacked to disk."""
    out = {}
    with open_stream(location, timeout_s) as stream, \
            tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".txt"):
                text = tar.extractfile(member).read().decode("utf-8", "replace")
                out[image_id(member.name)] = text.strip()
    return out


@functools.lru_cache(maxsize=2)
def caption_file(location: str, timeout_s: float = 60.0) -> dict[str, str]:
    """A published caption file as {image id: caption}: a JSON object, JSONL records, or a
    tar(.gz) of one <image>.txt per caption."""
    if location.lower().endswith(TAR_SUFFIXES):
        return caption_tar(location, timeout_s)
    data = read_bytes(location, timeout_s).decode("utf-8", "replace")
    try:
        records = json.loads(data)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in data.splitlines() if line.strip()]
    if isinstance(records, dict):
        return {image_id(k): str(v) for k, v in records.items()}
    out = {}
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or "caption" not in record or not (
                record.get("image_id") or record.get("file_name")):
            raise ValueError(f"{location} record {number}: expected image_id (or file_name) "
                             f"and caption, got {str(record)[:80]!r}")
        out[image_id(str(record.get("image_id") or record["file_name"]))] = str(record["caption"])
    return out


def caption_from_file(pending: Pending, params: CaptionParams, result: ShardResult) -> Pending:
    """Published captions where the file has the image; the samples it lacks are returned
    (source `file` counts them as failed, `file+llava` captions them with LLaVA)."""
    table = caption_file(str(params.captions_file))
    lacking = Pending()
    for key, ident, jpg in zip(pending.keys, pending.ids, pending.jpgs):
        if ident not in table:
            lacking.keys.append(key)
            lacking.ids.append(ident)
            lacking.jpgs.append(jpg)
            continue
        result.counts["from_file"] += 1
        reason = accept(result, key, table[ident], params)
        if reason is not None:
            result.failed[key] = reason
    result.counts["not_in_file"] += len(lacking.keys)
    return lacking


def caption_shard(params: Params, dataset: str, uri: str, captioner: Any = None) -> dict[str, Any]:
    """Caption one raw shard into its sidecar; a shard whose sidecar exists for the current
    caption params (the key in its path) is skipped, a changed param captions it anew."""
    name = shard_name(uri)
    target = sidecar_uri(params, dataset, name)
    if s3.exists(target):
        stats = s3.get_json(target)["stats"]
        return {"shard": name, "resumed": True, "caption_key": caption_key(params.caption),
                **stats}
    cfg = params.caption
    result = ShardResult()
    pending = collect(uri, cfg, result)
    if cfg.source in ("file", "file+llava"):
        pending = caption_from_file(pending, cfg, result)
    if cfg.source == "file":
        result.failed.update({key: "not_in_caption_file" for key in pending.keys})
    else:
        pending = decode_pending(pending, result)
        if pending.keys:
            if captioner is None:
                from tasks.caption.llava import shared

                captioner = shared(cfg)
            seed = cfg.seed * 1_000_003 + zlib.crc32(name.encode())
            caption_with_llava(captioner, pending, cfg, result, seed)
        result.counts["llava"] += sum(key in result.captions for key in pending.keys)
    result.counts["captioned"] = len(result.captions) - result.counts["had_caption"]
    result.counts.update(f"failed_{r}" for r in result.failed.values())
    s3.put_json(target, result.to_json(name, uri, cfg))
    return {"shard": name, "resumed": False, "caption_key": caption_key(cfg),
            **dict(result.counts)}


def plan(params: Params, dataset: str) -> list[str]:
    manifest = read_manifest(raw_prefix(params, dataset))
    if manifest is None:
        raise FileNotFoundError(f"no raw manifest for {dataset} at {raw_prefix(params, dataset)}:"
                                " run the download step first")
    return [s.uri for s in manifest.shards]


def summarize(dataset: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    totals: Counter = Counter()
    for shard in shards:
        totals.update({k: v for k, v in shard.items() if isinstance(v, int) and k != "resumed"})
    # The key of the captions' params: the summary (and so DVC) changes when they do.
    keys = sorted({str(s["caption_key"]) for s in shards if s.get("caption_key")})
    return {"dataset": dataset, "shards": len(shards), "caption_key": ",".join(keys),
            "resumed_shards": sum(bool(s.get("resumed")) for s in shards), **dict(totals)}


def summary_markdown(summary: dict[str, Any]) -> str:
    failed = {k.removeprefix("failed_"): v for k, v in summary.items() if k.startswith("failed_")}
    lines = [f"### Captions: {summary['dataset']}", "",
             f"{summary.get('captioned', 0)} captioned, {summary.get('had_caption', 0)} already "
             f"had one, {sum(failed.values())} failed of {summary.get('samples', 0)} samples in "
             f"{summary['shards']} shards ({summary['resumed_shards']} done before); "
             f"{summary.get('retried', 0)} retried once.", ""]
    if "from_file" in summary or "not_in_file" in summary:
        lines[2:2] = [f"From the caption file: {summary.get('from_file', 0)}; not in it: "
                      f"{summary.get('not_in_file', 0)}, of which {summary.get('llava', 0)} "
                      f"captioned with LLaVA.", ""]
    if failed:
        lines += ["| reason | samples |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(failed.items())]
    return "\n".join(lines) + "\n"


def caption_dataset(params: Params, dataset: str) -> dict[str, Any]:
    """The whole dataset in this process (CLI and DVC); the flow maps shards instead."""
    shards = [caption_shard(params, dataset, uri)
              for uri in tqdm(plan(params, dataset), desc=f"caption {dataset}", unit="shard")]
    return summarize(dataset, shards)
