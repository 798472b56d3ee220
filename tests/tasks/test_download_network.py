"""Large archives over a bad network, against the mirror's failure routes: Range resume after a
dropped body, Retry-After on 429/503, clear 401/403 errors, the scratch free-space check and
clean-up, and credentials that never follow a redirect to another host."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from pathlib import Path

import pytest

from infra.mirror.corpus import TOKEN, CorpusSize, generate
from infra.mirror.server import serve_in_thread
from tasks.common.shards import iter_shard, read_manifest
import requests

from infra.retry import RetryPolicy
from tasks.common.fetch import AccessDenied, FetchError, ScratchFull, Transfer
from tasks.download.run import download

SMALL = CorpusSize(cc3m=4, sa1b_archives=2, sa1b_per_archive=8, textcaps=4,
                   journeydb_archives=1, journeydb_per_archive=4, diffusiondb_parts=1,
                   diffusiondb_per_part=4, coco=4)
ARCHIVE = "sa1b/sa_000000.tar"


def _serve(root: Path, host: str = "127.0.0.1"):
    server, thread = serve_in_thread(root, host)
    return server


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A mirror of our own (the shared one's counters are not visible): server and corpus."""
    root = tmp_path_factory.mktemp("netmirror")
    generate(root, seed=1, size=SMALL)
    server = _serve(root)
    yield server
    server.shutdown()
    server.server_close()


def _fast(**kw) -> Transfer:
    waits: list[float] = []
    transfer = Transfer(timeout_s=5, policy=RetryPolicy(4, 0.01, 5.0), sleep=waits.append, **kw)
    transfer.waits = waits  # type: ignore[attr-defined]
    return transfer


def _requests(server, fragment: str) -> list[dict]:
    return [r for r in server.requests if fragment in r["path"]]


def test_body_dropped_at_60_percent_resumes_from_that_byte(net, tmp_path):
    original = (net.root / ARCHIVE).read_bytes()
    cut = len(original) * 60 // 100
    before = net.bytes_served[ARCHIVE]
    transfer = _fast()
    path = transfer.fetch_archive(f"{net.base_url}/_drop/60/{ARCHIVE}", tmp_path / "a.tar")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(original).digest()
    first, second = _requests(net, f"/_drop/60/{ARCHIVE}")[-2:]
    assert "Range" not in first["headers"] and first["range"] == (0, len(original))
    assert second["headers"]["Range"] == f"bytes={cut}-" and second["status"] == 206
    assert second["headers"]["If-Range"]  # the validator of the first response
    # Every byte crossed the wire once: the resume did not start over.
    assert net.bytes_served[ARCHIVE] - before == len(original)
    assert transfer.stats.snapshot() == {"archive_bytes": len(original), "resumes": 1,
                                         "retries": 1}
    assert not (tmp_path / "a.tar.part").exists() and not (tmp_path / "a.tar.part.json").exists()


def test_a_part_left_by_a_crashed_run_is_resumed_not_refetched(net, tmp_path):
    original = (net.root / ARCHIVE).read_bytes()
    url = f"{net.base_url}/{ARCHIVE}"
    dest = tmp_path / "a.tar"
    with pytest.raises(FetchError):  # one attempt only: the run "dies" with 60% on disk
        Transfer(timeout_s=5, policy=RetryPolicy(0)).fetch_archive(
            f"{net.base_url}/_drop/60/{ARCHIVE}", dest)
    assert (tmp_path / "a.tar.part").stat().st_size == len(original) * 60 // 100
    before = net.bytes_served[ARCHIVE]
    # Same URL on the rerun; the stored validator matches, so the server answers 206.
    path = _fast().fetch_archive(f"{net.base_url}/_drop/60/{ARCHIVE}", dest)
    assert path.read_bytes() == original
    assert net.bytes_served[ARCHIVE] - before == len(original) - len(original) * 60 // 100
    assert _fast().fetch_archive(url, dest) == dest  # complete: not fetched a third time


def test_429_and_503_wait_for_retry_after_and_are_counted(net, tmp_path):
    for code in (429, 503):
        transfer = _fast()
        path = transfer.fetch_archive(f"{net.base_url}/_busy/{code}/2/{ARCHIVE}",
                                      tmp_path / f"{code}.tar")
        assert path.read_bytes() == (net.root / ARCHIVE).read_bytes()
        # Backoff alone would wait under 0.02 s here; the server asked for 1 s.
        assert len(transfer.waits) == 2 and all(w >= 1.0 for w in transfer.waits)
        stats = transfer.stats.snapshot()
        assert (stats["rate_limited"], stats["retries"]) == (2, 2)


def test_401_and_403_fail_at_once_with_what_to_do(net, tmp_path):
    for code, hint in ((401, "needs a token: export HF_TOKEN"), (403, "accept the dataset's terms")):
        transfer = _fast()
        with pytest.raises(AccessDenied, match=hint):
            transfer.fetch_archive(f"{net.base_url}/_status/{code}", tmp_path / "x.tar")
        assert transfer.waits == []  # not retried


def test_gated_archive_fails_the_dataset_instead_of_being_listed(net, demo_params, tmp_path):
    links = net.root / "sa1b/links-gated.txt"
    links.write_text(f"file_name\tcdn_link\nsa_000000.tar\t{TOKEN}/_status/403\n")
    base = demo_params()
    source = dataclasses.replace(base.download.sa1b, links=f"{net.base_url}/sa1b/links-gated.txt")
    with pytest.raises(AccessDenied, match="refused access"):
        download(demo_params(sa1b=source, scratch_dir=str(tmp_path)), "sa1b")


def test_free_space_is_checked_before_the_first_byte(net, tmp_path):
    transfer = _fast(reserve_bytes=1 << 60)
    with pytest.raises(ScratchFull, match="download.scratch_dir"):
        transfer.fetch_archive(f"{net.base_url}/{ARCHIVE}", tmp_path / "a.tar")
    assert not (tmp_path / "a.tar.part").exists() and not (tmp_path / "a.tar").exists()


def test_dropped_and_rate_limited_archives_give_identical_shards_and_no_scratch_left(
        net, demo_params, tmp_path, s3_prefix):
    plain = net.root / "sa1b/links.txt"
    flaky = net.root / "sa1b/links-flaky.txt"
    lines = plain.read_text().splitlines()[:3]  # header + the two archives, not the expired one
    routes = ["_drop/60/", "_busy/503/1/_drop/30/"]
    flaky.write_text("\n".join([lines[0]] + [
        line.replace(f"{TOKEN}/", f"{TOKEN}/{route}") for line, route in zip(lines[1:], routes)])
        + "\n")
    (net.root / "sa1b/links-ok.txt").write_text("\n".join(lines) + "\n")
    base = demo_params()
    fast = {"backoff_s": 0.05, "backoff_max_s": 1.0}

    def run(name: str, storage_suffix: str, scratch: Path) -> dict:
        source = dataclasses.replace(base.download.sa1b, links=f"{net.base_url}/sa1b/{name}")
        params = demo_params(sa1b=source, scratch_dir=str(scratch), **fast)
        storage = dataclasses.replace(params.storage,
                                      raw_prefix=params.storage.raw_prefix + storage_suffix)
        return download(dataclasses.replace(params, storage=storage), "sa1b")

    ok = run("links-ok.txt", "-ok", tmp_path / "ok")
    flaky_run = run("links-flaky.txt", "-flaky", tmp_path / "flaky")
    assert _contents(flaky_run) == _contents(ok) and ok["samples"] > 0
    assert flaky_run["network"]["resumes"] == 2 and flaky_run["network"]["rate_limited"] == 1
    assert ok["network"].get("retries", 0) == 0
    # Scratch: the archives went once their shards were committed; nothing else was left.
    leftovers = [p for p in (tmp_path / "flaky").rglob("*") if p.is_file()]
    assert leftovers == []


def _contents(summary: dict) -> dict[str, dict]:
    """Every sample's files, with the source URL (which names the failure route) left out."""
    out = {}
    for shard in read_manifest(summary["manifest"]).shards:
        for key, files in iter_shard(shard.uri):
            meta = json.loads(files["json"])
            meta.pop("url")
            out[key] = {**files, "json": meta}
    return out


def _second_loopback() -> str:
    """127.0.0.2 when this host routes it (Linux does); else 127.0.0.1 on another port."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


def test_token_is_sent_to_its_host_only_and_dropped_on_redirect(net, tmp_path, monkeypatch):
    other = _serve(net.root, _second_loopback())
    try:
        monkeypatch.setenv("HF_TOKEN", "hf_secret_for_the_first_host")
        transfer = _fast(token_hosts=("127.0.0.1",))
        other_host = other.base_url.removeprefix("http://")
        data = transfer.read_bytes(f"{net.base_url}/_redirect/{other_host}/{ARCHIVE}")
        assert data == (net.root / ARCHIVE).read_bytes()
        asked = _requests(net, f"/_redirect/{other_host}/")[-1]
        assert asked["headers"]["Authorization"] == "Bearer hf_secret_for_the_first_host"
        received = [r for r in other.requests if r["path"] == f"/{ARCHIVE}"]
        assert received and all("Authorization" not in r["headers"] for r in received)
        # An archive fetch follows the same rule.
        transfer.fetch_archive(f"{net.base_url}/_redirect/{other_host}/{ARCHIVE}",
                               tmp_path / "r.tar")
        assert all("Authorization" not in r["headers"] for r in other.requests)
        # A redirect within the origin keeps it; a host not in token_hosts never gets it.
        own = net.base_url.removeprefix("http://")
        transfer.read_bytes(f"{net.base_url}/_redirect/{own}/{ARCHIVE}")
        assert net.requests[-1]["headers"]["Authorization"].startswith("Bearer ")
        _fast().read_bytes(f"{net.base_url}/{ARCHIVE}")
        assert "Authorization" not in net.requests[-1]["headers"]
    finally:
        other.shutdown()
        other.server_close()


def test_credentials_survive_only_same_origin_or_an_upgrade():
    """The rule requests applies on every redirect our session follows (Session.should_strip_auth),
    pinned here: a requests release that loosened it would leak HF_TOKEN."""
    strips = requests.Session().should_strip_auth
    assert not strips("https://huggingface.co/a", "https://huggingface.co/b")
    assert not strips("http://h.example/a", "https://h.example/a")
    assert strips("https://huggingface.co/a", "http://huggingface.co/a")
    assert strips("https://huggingface.co/a", "https://cdn-lfs.hf.co/a")
    assert strips("http://127.0.0.1:1/a", "http://127.0.0.1:2/a")
