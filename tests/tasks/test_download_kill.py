"""A download worker killed with SIGKILL in the middle of a shard, then rerun.

The child is the real CLI (`python -m tasks download`); MB_DOWNLOAD_TEST_SAMPLE_DELAY_S (a
test-only knob) slows each written sample so the kill lands inside a shard reliably.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import yaml

from infra import s3
from infra.s3 import split_uri
from infra.settings import REPO_ROOT
from tasks.common.shards import done_records, iter_shard, read_manifest, write_manifest
from tasks.download.core import SAMPLE_DELAY_ENV
from tasks.download.run import download, raw_prefix
from tasks.params import load_params

SHARD_SIZE = 5  # TextCaps in the mirror: 40 images -> 8 shards


def _params_file(tmp_path, s3_prefix) -> str:
    data = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    demo = data["demo"]
    demo["storage"]["raw_prefix"] = f"{split_uri(s3_prefix)[1]}/raw"
    for name, section in demo["download"].items():
        if isinstance(section, dict) and "enabled" in section:
            section["enabled"] = name == "textcaps"
    demo["download"]["textcaps"]["shard_size"] = SHARD_SIZE
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _wait_for_records(prefix: str, count: int, proc: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the download finished before it could be killed"
        done = len(done_records(prefix))
        if done >= count:
            return done
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} shards committed in {timeout_s} s")


def test_killed_mid_shard_leaves_no_partial_shard_and_rerun_completes(tmp_path, s3_prefix,
                                                                      mirror):
    params_path = _params_file(tmp_path, s3_prefix)
    params = load_params(params_path, "demo")
    prefix = raw_prefix(params, "textcaps")
    env = {**os.environ, SAMPLE_DELAY_ENV: "0.1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tasks", "download", "--params", params_path],
                            cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        committed = _wait_for_records(prefix, 2, proc, timeout_s=60)
        time.sleep(0.25)  # about half of the next shard (5 samples x 0.1 s)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    records = done_records(prefix)
    assert committed <= len(records) < 8
    in_progress = f"{len(records):06d}"
    assert in_progress not in records
    orphan = s3.join(prefix, f"{in_progress}.tar")
    if s3.exists(orphan):  # killed between a shard's upload and its record: whole, uncommitted
        errors: list[str] = []
        assert len(list(iter_shard(orphan, errors))) <= SHARD_SIZE and not errors
    manifest = write_manifest("textcaps", prefix)  # what any reader sees after the crash
    assert [s.name for s in manifest.shards] == sorted(records)
    for shard in manifest.shards:
        assert len(list(iter_shard(shard.uri))) == shard.samples

    resumed = download(params, "textcaps")
    assert resumed["shards_skipped"] == len(records)
    assert resumed["shards_written"] == 8 - len(records) and resumed["complete"]
    keys = [k for shard in read_shards(resumed["manifest"]) for k in shard]
    assert len(keys) == len(set(keys)) == resumed["samples"]

    clean_params = dataclasses.replace(params, storage=dataclasses.replace(
        params.storage, raw_prefix=params.storage.raw_prefix + "-clean"))
    clean = download(clean_params, "textcaps")
    clean_keys = [k for shard in read_shards(clean["manifest"]) for k in shard]
    assert sorted(keys) == sorted(clean_keys)
    assert resumed["failed"] == clean["failed"]


def read_shards(manifest_uri: str) -> list[list[str]]:
    """Sample keys of each shard listed in a manifest."""
    return [[k for k, _ in iter_shard(s.uri)] for s in read_manifest(manifest_uri).shards]
