"""CC3M through img2dataset against the mirror: its statuses become our failure reasons."""

from __future__ import annotations

import dataclasses
import json
import urllib.request

from tasks.common.shards import iter_shard, read_manifest
from tasks.download.run import download


def test_cc3m_img2dataset_shards_keep_row_keys_and_reasons(demo_params, mirror):
    source = dataclasses.replace(demo_params().download.cc3m, shard_size=30)
    params = demo_params(cc3m=source)
    summary = download(params, "cc3m")
    assert summary["attempted"] == 60 and summary["shards"] == 2
    assert {"http_404", "http_500", "connection_error", "decode_error", "empty_caption",
            "caption_not_utf8", "too_small"} <= set(summary["failed"])

    with urllib.request.urlopen(f"{mirror}/cc3m/Train_GCC-training.tsv") as resp:
        rows = resp.read().split(b"\n")
    manifest = read_manifest(summary["manifest"])
    keys = []
    for shard in manifest.shards:
        for key, files in iter_shard(shard.uri):
            row = int(key.removeprefix("cc3m-"))
            caption, _, url = rows[row].decode().partition("\t")
            meta = json.loads(files["json"])
            assert (meta["row"], meta["url"], files["txt"].decode()) == (row, url, caption)
            keys.append(key)
    assert len(keys) == len(set(keys)) == summary["succeeded"]

    again = download(params, "cc3m")
    assert again["shards_written"] == 0 and again["succeeded"] == summary["succeeded"]
