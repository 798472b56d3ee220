"""Download building blocks without S3: image filter, upstream parsers, config, mirror server."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import pytest
from PIL import Image

from infra.config import ConfigError
from infra.mirror.corpus import corrupt, tar_bytes
from tasks.common.fetch import FetchError, fetch_image, reason_from_message
from tasks.download import cc3m, journeydb, sa1b, textcaps
from tasks.download.config import ImageParams
from tasks.download.core import Item, sample_key
from tasks.download.drivers import Archive, archive_entries, match_selected, take
from tasks.download.images import ImageRejected, prepare_image
from tasks.params import load_params, parse_params


def _jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 200, 30, 0)[: len(mode)]).save(
        out, format="PNG" if mode == "RGBA" else "JPEG")
    return out.getvalue()


def test_image_filter_downscales_short_side_to_512_and_skips_small():
    params = ImageParams()
    out = prepare_image(_jpeg((1000, 700)), params)
    assert (out.width, out.height) == (731, 512)  # long side truncated like torchvision
    assert (out.original_width, out.original_height) == (1000, 700)
    assert Image.open(io.BytesIO(out.jpg)).size == (731, 512)
    kept = prepare_image(_jpeg((300, 400)), params)
    assert (kept.width, kept.height) == (300, 400)
    with pytest.raises(ImageRejected) as err:
        prepare_image(_jpeg((255, 900)), params)
    assert err.value.reason == "too_small"


def test_image_filter_rejects_corrupt_and_flattens_alpha_on_white():
    for bad in (corrupt(_jpeg((600, 600))), b"<html>moved</html>", b""):
        with pytest.raises(ImageRejected) as err:
            prepare_image(bad, ImageParams())
        assert err.value.reason == "decode_error"
    out = prepare_image(_jpeg((300, 300), "RGBA"), ImageParams())
    pixel = Image.open(io.BytesIO(out.jpg)).getpixel((5, 5))
    assert all(c > 245 for c in pixel)  # fully transparent -> white, not black


def test_cc3m_tsv_rows_keep_line_numbers_and_flag_bad_captions():
    data = (b"a dog\thttp://x/0.jpg\n"
            b"caf\xe9\thttp://x/1.jpg\r\n"
            b"\n"
            b"\thttp://x/3.jpg\n"
            b"no tab here\n"
            b"a cat\thttp://x/5.jpg")
    items = cc3m.parse_tsv(data)
    assert [i.key for i in items] == ["cc3m-0", "cc3m-1", "cc3m-3", "cc3m-4", "cc3m-5"]
    assert [i.skip for i in items] == [None, "caption_not_utf8", "empty_caption",
                                       "malformed_row", None]
    assert items[0].caption == "a dog" and items[-1].url == "http://x/5.jpg"


def test_textcaps_groups_captions_and_skips_unstorable_ones():
    doc = {"data": [
        {"image_id": "ab", "caption_id": 1, "caption_str": "second", "flickr_original_url": "u"},
        {"image_id": "ab", "caption_id": 0, "caption_str": "bad \udcff",
         "flickr_original_url": "u"},
        {"image_id": "cd", "caption_id": 0, "caption_str": " ", "flickr_original_url": "v"},
    ]}
    first, second = textcaps.parse(doc)
    assert (first.key, first.caption, first.skip) == ("textcaps-ab", "second", None)
    assert first.extra["captions"] == ["bad \udcff", "second"]
    assert second.skip == "empty_caption"


def test_sa1b_link_list_and_journeydb_annotations(tmp_path):
    links = (b"file_name\tcdn_link\n"
             b"sa_000000.tar\thttps://cdn/a?sig=1\nsa_000001.tar\thttps://cdn/b\n")
    archives = sa1b.parse_links(links)
    assert [(a.name, a.url) for a in archives] == [("sa_000000", "https://cdn/a?sig=1"),
                                                   ("sa_000001", "https://cdn/b")]
    assert take(archives, 0.01, None) == archives[:1]  # a non-zero share takes at least one
    with pytest.raises(ValueError, match="line 2"):
        sa1b.parse_links(b"file_name\tcdn_link\nonly-a-name\n")
    lines = "\n".join(json.dumps({"img_path": f"./{a}/{s}.jpg", "prompt": p}) for a, s, p in
                      [("000", "x1", "p1"), ("000", "x1", "dup"), ("001", "y.2", "")])
    path = tmp_path / "anno.jsonl.tgz"
    path.write_bytes(tar_bytes([("anno.jsonl", lines.encode())], gzip=True))
    counts = journeydb.split(path, tmp_path / "split")
    assert counts == {"000": 1, "001": 1}
    plan = journeydb.plan(tmp_path / "split", journeydb.selected_archives(counts, 1.0, None),
                          "http://m/imgs")
    assert iter(plan) is plan  # a generator: an archive's items are built when it is reached
    by_archive = {a.name: list(a.selected.values()) for a in plan}
    assert {k: [i.key for i in v] for k, v in by_archive.items()} == {
        "000": ["journeydb-x1"], "001": ["journeydb-y"]}
    assert by_archive["000"][0].caption == "p1"  # a repeated image keeps its first entry
    assert by_archive["001"][0].skip == "empty_caption"
    assert by_archive["000"][0].url == "http://m/imgs/000.tgz"


def test_journeydb_plan_splits_by_archive_and_honours_fraction_and_cap(tmp_path):
    """Archives interleaved in the file: split once, then each archive from its own file."""
    rows = [(f"{a:03d}", f"i{a}_{k}") for k in range(5) for a in range(7)]  # archives mixed
    path = tmp_path / "anno.jsonl"
    path.write_text("\n".join(json.dumps({"img_path": f"./{a}/{s}.jpg", "prompt": f"p {s}"})
                              for a, s in rows))
    counts = journeydb.split(path, tmp_path / "split")
    assert counts == {f"{a:03d}": 5 for a in range(7)}
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == \
        [f"{a:03d}.jsonl" for a in range(7)]

    def keys(fraction, cap):
        selected = journeydb.selected_archives(counts, fraction, cap)
        return {a.name: sorted(i.key for i in a.selected.values())
                for a in journeydb.plan(tmp_path / "split", selected, "u")}

    whole = keys(1.0, None)
    assert len(whole) == 7 and all(len(v) == 5 for v in whole.values())
    assert whole["003"] == sorted(f"journeydb-i3_{k}" for k in range(5))
    assert [len(v) for v in keys(1.0, 12).values()] == [5, 5, 2]  # name order, cut at 12
    assert list(keys(0.3, None)) == ["000", "001", "002"]


def test_archive_entries_report_truncation_and_missing_members(tmp_path):
    members = [(f"000/m{i}.jpg", _jpeg((300, 300))) for i in range(4)]
    data = tar_bytes(members)
    cut = data.index(b"000/m2.jpg") + 600  # inside the third member's bytes
    selected = {f"m{i}": Item(f"journeydb-m{i}", f"m{i}", "c", "u") for i in range(5)}
    archive = Archive("000", "u", "tar", selected)
    path = tmp_path / "000"
    path.write_bytes(data[:cut])
    truncated = list(archive_entries(archive, path, match_selected, None))
    path.write_bytes(data)
    whole = list(archive_entries(archive, path, match_selected, None))
    # The group open at the break (m1) cannot be known complete, so the shard contract drops it.
    assert [(e.item.key[-2:], e.reason) for e in truncated] == [
        ("m0", None), ("m1", "truncated_archive"), ("m2", "truncated_archive"),
        ("m3", "truncated_archive"), ("m4", "truncated_archive")]
    assert [e.reason for e in whole] == [None] * 4 + ["missing_in_archive"]


def test_sample_keys_are_stable_and_dot_free():
    assert sample_key("diffusiondb", "f3a1-b2.png") == "diffusiondb-f3a1-b2_png"
    assert sample_key("coco", "42") == "coco-42"


def test_img2dataset_messages_map_to_reasons():
    assert reason_from_message("HTTP Error 404: Not Found") == "http_404"
    assert reason_from_message("<urlopen error [Errno 111] Connection refused>") == \
        "connection_error"
    assert reason_from_message("The read operation timed out") == "timeout"
    assert reason_from_message("something else") == "other"


def test_params_profiles_validate_and_reject_bad_download_values():
    demo, full = load_params(profile="demo"), load_params(profile="full")
    assert demo.download.enabled() == ["coco", "cc3m", "sa1b", "textcaps", "journeydb",
                                       "diffusiondb"]
    assert full.download.diffusiondb.nsfw_max == 0.2
    assert full.download.image == ImageParams(256, 512, 95)
    base = {"profile": "demo", "demo": {}}
    with pytest.raises(ConfigError, match="fraction must be in"):
        parse_params({**base, "demo": {"download": {"coco": {"fraction": 0}}}})
    with pytest.raises(ConfigError, match=r"no source location in \['annotations'\]"):
        parse_params({**base, "demo": {"download": {"coco": {"enabled": True}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_params({**base, "demo": {"download": {"coco": {"fractoin": 0.5}}}})


def test_mirror_serves_upstream_files_with_its_own_address(mirror):
    with urllib.request.urlopen(f"{mirror}/cc3m/Train_GCC-training.tsv") as resp:
        tsv = resp.read()
    assert b"mirror.invalid" not in tsv and f"{mirror}/cc3m/images/".encode() in tsv
    assert b"caf\xe9" in tsv  # the non-UTF-8 caption is served as raw bytes
    for path, code in (("/cc3m/images/missing-3.jpg", 404), ("/_status/500", 500),
                       ("/../../etc/passwd", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{mirror}{path}")
        assert err.value.code == code
    with pytest.raises(FetchError) as err:
        fetch_image(f"{mirror}/_status/503", timeout_s=2, retries=1)
    assert err.value.reason == "http_503"
