"""The fast ustar reader gives exactly what tarfile gives, and steps aside when it cannot."""

from __future__ import annotations

import io
import tarfile

import pytest

from tasks.common.shards import LocalShard, iter_tar_bytes, iter_tar_samples, scan_ustar


def _shard(tmp_path, n: int = 6) -> bytes:
    with LocalShard(tmp_path) as out:
        for i in range(n):
            out.write(f"sample-{i}", {"jpg": bytes(range(i * 37 % 256)) * (i + 1), "txt": f"t {i}",
                                      "json": {"i": i}, "empty": b""})
        out.close()
    return out.path.read_bytes()


def _tarfile_way(data: bytes) -> tuple[list, list[str]]:
    errors: list[str] = []
    return list(iter_tar_samples(io.BytesIO(data), errors)), errors


def _fast_way(data: bytes) -> tuple[list, list[str]]:
    errors: list[str] = []
    return list(iter_tar_bytes(data, errors)), errors


def test_fast_reader_matches_tarfile_on_our_shards(tmp_path):
    data = _shard(tmp_path)
    assert scan_ustar(data) is not None
    fast, tar = _fast_way(data), _tarfile_way(data)
    assert fast == tar and len(fast[0]) == 6 and not fast[1]
    assert fast[0][2] == ("sample-2", {"jpg": bytes(range(74)) * 3, "txt": b"t 2",
                                       "json": b'{"i": 2}', "empty": b""})


@pytest.mark.parametrize("member", ["sample-2.jpg", "sample-5.jpg"])
def test_truncated_shard_falls_back_to_tarfile_and_reports(tmp_path, member):
    data = _shard(tmp_path)
    offset, size = next((o, n) for name, o, n in scan_ustar(data) if name == member)
    broken = data[:offset + size // 2]  # cut inside the member's data
    assert scan_ustar(broken) is None
    fast, tar = _fast_way(broken), _tarfile_way(broken)
    assert fast == tar and fast[1], "a truncation must be reported"


def test_bad_checksum_and_pax_members_fall_back(tmp_path):
    data = bytearray(_shard(tmp_path))
    data[3584 + 20] ^= 0xFF  # a byte of the fifth header: its checksum no longer holds
    assert _fast_way(bytes(data)) == _tarfile_way(bytes(data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("k\u00e9y.txt")  # a non-ASCII name needs a pax header
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    assert scan_ustar(buf.getvalue()) is None
    assert _fast_way(buf.getvalue()) == _tarfile_way(buf.getvalue())
