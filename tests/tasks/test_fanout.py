"""Units over devices on one worker: two "devices" as two processes (MB_DEVICES=2) on CPU."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np
import pytest

from infra import s3
from infra.s3 import split_uri
from tasks.caption.run import plan as caption_plan
from tasks.caption.run import raw_prefix as caption_raw_prefix
from tasks.common.fanout import run_on_devices
from tasks.common.npy import npy_load
from tasks.common.shards import (LocalShard, commit_shard, done_records, iter_shard,
                                 read_manifest, write_manifest)
from tasks.encode.run import encode_dataset, finish, latent_prefix, plan, raw_prefix
from tests.tasks.test_caption import _params as _caption_params
from tests.tasks.test_caption import _sa1b_samples, tiny_llava  # noqa: F401 (fixture)
from tests.tasks.test_encode import _params, _raw_dataset, tiny_models  # noqa: F401 (fixture)

ENCODE = "tasks.encode.step"
CAPTION = "tasks.caption.step"


def _samples(params, dataset: str) -> dict[str, dict[str, dict[str, bytes]]]:
    """Every latent shard's samples, read from the shards themselves: {shard: {key: sample}}."""
    manifest = read_manifest(latent_prefix(params, dataset))
    return {shard.name: dict(iter_shard(shard.uri)) for shard in manifest.shards}


def test_two_devices_take_alternate_units_load_once_and_write_what_one_process_writes(
        s3_prefix, tiny_models, monkeypatch):
    params = _params(s3_prefix, tiny_models, datasets=("cc3m",), shards_per_unit=1)
    _raw_dataset(params, "cc3m", shards=4, per_shard=3)
    units = plan(params, "cc3m")
    monkeypatch.setenv("MB_DEVICES", "2")
    records = run_on_devices(ENCODE, params, "cc3m", units)

    assert [r["index"] for r in records] == [0, 1, 2, 3]
    # Device i takes every i-th unit, each device in its own child process.
    assert [r["device"] for r in records] == [0, 1, 0, 1]
    pids = {r["device"]: r["pid"] for r in records}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert all(r["pid"] == pids[r["device"]] for r in records)
    # Each child loaded the encoders once, for its first unit, and kept them for its second.
    assert [r["models_loaded"] for r in records] == [1, 1, 1, 1]
    assert [r["result"]["shards_encoded"] for r in records] == [1, 1, 1, 1]
    summary = finish(params, "cc3m", [r["result"] for r in records])
    assert summary["shards"] == 4 and summary["samples"] == 12

    # The same dataset encoded by one process, into another prefix: the same shards.
    _, key = split_uri(s3_prefix)
    single = dataclasses.replace(params, storage=dataclasses.replace(
        params.storage, latents_prefix=f"{key}/latents-single"))
    monkeypatch.setenv("MB_DEVICES", "1")
    assert encode_dataset(single, "cc3m")["samples"] == 12
    fanned, alone = _samples(params, "cc3m"), _samples(single, "cc3m")
    assert set(fanned) == set(alone) and len(fanned) == 4
    keys = Counter(k for shard in fanned.values() for k in shard)
    assert len(keys) == 12 and max(keys.values()) == 1
    for name, samples in fanned.items():
        assert list(samples) == list(alone[name])
        for sample_key, sample in samples.items():
            other = alone[name][sample_key]
            assert set(sample) == set(other)
            assert sample["txt"] == other["txt"]
            for field in ("lat32.npy", "txtemb.npy"):
                # Same seed per shard; the children use one thread each, which can round a
                # value to the neighbouring fp16 number (2**-10 apart relative).
                np.testing.assert_allclose(npy_load(sample[field]).astype(np.float32),
                                           npy_load(other[field]).astype(np.float32),
                                           rtol=2e-3, atol=1e-7)


def test_a_failing_device_fails_the_step_naming_device_and_unit(s3_prefix, tiny_models,
                                                                 monkeypatch):
    params = _params(s3_prefix, tiny_models, datasets=("cc3m",), shards_per_unit=1)
    _raw_dataset(params, "cc3m", shards=3, per_shard=2)
    missing = s3.join(raw_prefix(params, "cc3m"), "99999.tar")
    units = plan(params, "cc3m") + [[missing]]
    monkeypatch.setenv("MB_DEVICES", "2")
    with pytest.raises(RuntimeError) as err:
        run_on_devices(ENCODE, params, "cc3m", units)
    message = str(err.value)
    assert "encode device 1" in message and "failed on unit 3" in message and missing in message
    assert "device 0" not in message
    # Device 0's units and device 1's first unit were committed before the failure.
    assert len(done_records(latent_prefix(params, "cc3m"))) == 3


def test_two_devices_caption_alternate_shards_and_a_rerun_loads_no_model(s3_prefix, tiny_llava,
                                                                          monkeypatch):
    params = _caption_params(s3_prefix, model=tiny_llava, device="cpu", batch_size=2,
                             max_new_tokens=4, min_chars=1)
    prefix = caption_raw_prefix(params, "sa1b")
    samples = list(_sa1b_samples(8).items())
    for shard in range(4):
        with LocalShard() as out:
            for key, sample in samples[2 * shard:2 * shard + 2]:
                out.write(key, sample)
            out.close()
            commit_shard(out.path, prefix, f"{shard:05d}", out.samples)
    write_manifest("sa1b", prefix)
    monkeypatch.setenv("MB_DEVICES", "2")

    records = run_on_devices(CAPTION, params, "sa1b", caption_plan(params, "sa1b"))
    assert [r["device"] for r in records] == [0, 1, 0, 1]
    assert len({r["pid"] for r in records}) == 2
    # The captioner is loaded once per device, in the thread that first needs it.
    assert [r["models_loaded"] for r in records] == [1, 1, 1, 1]
    assert [r["result"]["resumed"] for r in records] == [False] * 4
    assert sum(r["result"]["samples"] for r in records) == 8

    # Every shard has its sidecar: a rerun resumes them all and loads no model.
    again = run_on_devices(CAPTION, params, "sa1b", caption_plan(params, "sa1b"))
    assert [r["result"]["resumed"] for r in again] == [True] * 4
    assert [r["models_loaded"] for r in again] == [0, 0, 0, 0]
