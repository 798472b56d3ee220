"""The object store goes away for 20 s in the middle of a checkpoint upload and in the middle of
encoding, with the real SeaweedFS process stopped and restarted: the work waits it out and
completes, the checkpoint pointer names only complete checkpoints, nothing written is lost."""

from __future__ import annotations

import threading
import time

import pytest

from infra import s3, services

OUTAGE_S = 20.0


def _outage() -> threading.Thread:
    """Stop SeaweedFS now and start it again OUTAGE_S seconds later, in the background."""
    by_name = {s.name: s for s in services.all_services()}
    services.stop_all(["s3"], term_s=5.0, int_s=2.0)
    assert not s3_up(), "the S3 server still answers after being stopped"

    def restart() -> None:
        time.sleep(OUTAGE_S)
        services.start(by_name["s3"])

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


def s3_up() -> bool:
    return services.s3_healthy()


@pytest.fixture
def outage_hook(s3_service):
    """Yields a function that starts the outage once; waits for the restart at the end."""
    started: list[threading.Thread] = []

    def trigger() -> None:
        if not started:
            started.append(_outage())

    yield trigger
    for thread in started:
        thread.join(timeout=180)
    assert s3_up()


def test_checkpoint_upload_survives_an_outage(s3_prefix, outage_hook, monkeypatch):
    from model.config import preset
    from model.microdit import build_model
    from tasks.train import checkpoint

    net = build_model(preset("tiny"))
    first = checkpoint.save(s3_prefix, net, net, {"step": 1}, 1, 8)
    original, uploads = s3.upload_file, []

    def upload(path, uri):  # the second file of the next checkpoint meets a dead store
        uploads.append(uri)
        if len(uploads) == 2:
            outage_hook()
        return original(path, uri)

    monkeypatch.setattr(s3, "upload_file", upload)
    retried = s3.RETRIED["attempts"]
    started = time.monotonic()
    second = checkpoint.save(s3_prefix, net, net, {"step": 2}, 2, 16)
    assert time.monotonic() - started >= OUTAGE_S * 0.8  # it really waited the outage out
    assert s3.RETRIED["attempts"] > retried
    assert checkpoint.latest(s3_prefix) == second
    for name in checkpoint.FILES:  # the pointer names a complete checkpoint
        assert s3.exists(s3.join(second.uri, name))
        assert s3.exists(s3.join(first.uri, name))  # and the earlier one is intact


def test_encode_survives_an_outage(s3_prefix, outage_hook, monkeypatch, tmp_path):
    import dataclasses

    from tasks.common import shards
    from tasks.common.shards import read_manifest
    from tasks.encode import run as encode_run
    from tests.tasks.test_encode import _params, _raw_dataset
    from tasks.encode.tiny import save_tiny_text_encoder, save_tiny_vae

    models = (str(save_tiny_vae(tmp_path / "vae")), str(save_tiny_text_encoder(tmp_path / "text")))
    params = _params(s3_prefix, models, datasets=("cc3m",))
    params = dataclasses.replace(params, encode=dataclasses.replace(params.encode,
                                                                    shards_per_unit=1))
    _raw_dataset(params, "cc3m", shards=3, per_shard=4)
    original = shards.commit_shard

    def commit(*args, **kwargs):  # the store goes away right after the first latent shard
        record = original(*args, **kwargs)
        outage_hook()
        return record

    monkeypatch.setattr(encode_run, "commit_shard", commit)
    summary = encode_run.encode_dataset(params, "cc3m")
    assert summary["shards"] == 3 and summary["samples"] == 12
    manifest = read_manifest(encode_run.latent_prefix(params, "cc3m"))
    assert sum(1 for shard in manifest.shards for _ in shards.iter_shard(shard.uri)) == 12
