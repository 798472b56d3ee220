"""Where a shard's captions live: keyed by the caption params that decide their text."""

from __future__ import annotations

from infra import s3
from tasks.caption.config import CaptionParams
from tasks.common.keys import digest, model_fingerprint, without
from tasks.params import Params

# How captions are computed, not what they say: batch size (left-padded greedy decoding is
# batch-invariant), device placement, compilation, KV-cache layout, the engine (its greedy
# captions equal generate's, tests/tasks/test_caption.py), the switch and the list.
EXECUTION_ONLY = ("enabled", "datasets", "batch_size", "device", "compile",
                  "cache_implementation", "engine")


def caption_key(params: CaptionParams) -> str:
    fields = without(params, *EXECUTION_ONLY)
    if params.source != "file":
        fields["model"] = model_fingerprint(params.model)  # a rebuilt local model: new key
    if params.source == "file":
        fields = {k: fields[k] for k in ("source", "captions_file", "min_chars",
                                         "max_repeat_share")}
    return digest(fields)


def sidecar_uri(params: Params, dataset: str, shard_name: str) -> str:
    """s3://BUCKET/<raw>/<dataset>/captions/<caption key>/<shard>.json"""
    return s3.join(params.storage.uri(params.storage.raw_prefix, dataset), "captions",
                   caption_key(params.caption), f"{shard_name}.json")


def captions_apply(params: Params, dataset: str) -> bool:
    """Whether the caption step gives this dataset's captions (encode reads its sidecars)."""
    return params.caption.enabled and dataset in params.caption.datasets
