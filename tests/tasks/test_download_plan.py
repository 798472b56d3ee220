"""The DiffusionDB work plan streams its metadata: the same archives and items as grouping the
whole table in memory, in upstream order or shuffled, with fraction and max_samples; and the
benchmark behind docs/benchmarks.md runs on a small file."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.plan_metadata import main as plan_benchmark
from benchmarks.plan_metadata import write_metadata
from tasks.download import diffusiondb
from tasks.download.config import DiffusionDBParams
from tasks.download.drivers import take


def _expected(path: Path, source: DiffusionDBParams) -> list[tuple[str, list[str]]]:
    """The plan computed from the whole table at once: parts ascending, file order within."""
    rows = pq.read_table(path).to_pylist()
    parts = take(sorted({r["part_id"] for r in rows}), source.fraction, None)
    ordered = [r for part in parts for r in rows if r["part_id"] == part]
    ordered = take(ordered, 1.0, source.max_samples)
    out: dict[int, list[str]] = {}
    for row in ordered:
        out.setdefault(row["part_id"], []).append(row["image_name"])
    return [(diffusiondb.part_name(p), names) for p, names in out.items()]


def _planned(path: Path, source: DiffusionDBParams) -> list[tuple[str, list[str]]]:
    archives = diffusiondb.plan(pq.ParquetFile(path), source, "https://host/parts")
    return [(a.name, [i.source_id for i in a.selected.values()]) for a in archives]


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("fraction, max_samples", [(1.0, None), (0.5, None), (1.0, 250)])
def test_streamed_plan_equals_the_whole_table_plan(tmp_path, monkeypatch, shuffled, fraction,
                                                  max_samples):
    # Small batches and windows, so a 1,000-row file crosses many of both.
    monkeypatch.setattr(diffusiondb, "BATCH_ROWS", 64)
    monkeypatch.setattr(diffusiondb, "WINDOW_ROWS", 300)
    path = tmp_path / "metadata.parquet"
    write_metadata(path, rows=1000, per_part=90, shuffled=shuffled)
    source = DiffusionDBParams(enabled=True, metadata=str(path), parts="x", fraction=fraction,
                               max_samples=max_samples)
    assert diffusiondb.part_plan(pq.ParquetFile(path), source).grouped is not shuffled
    assert _planned(path, source) == _expected(path, source)


def test_archives_come_one_at_a_time(tmp_path, monkeypatch):
    """The plan is a generator: the first archive is out before the file has been read."""
    monkeypatch.setattr(diffusiondb, "BATCH_ROWS", 50)
    path = tmp_path / "metadata.parquet"
    write_metadata(path, rows=1000, per_part=100, shuffled=False)
    source = DiffusionDBParams(enabled=True, metadata=str(path), parts="x")
    metadata = pq.ParquetFile(path)
    parts = diffusiondb.part_plan(metadata, source)
    read: list[int] = []
    batches = metadata.iter_batches

    def counting(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            read.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(metadata, "iter_batches", counting)
    first = next(diffusiondb.plan(metadata, source, "https://host/parts", parts))
    assert first.name == "part-000001" and len(first.selected) == 100
    assert sum(read) < 1000


def test_benchmark_reports_rows_per_second_and_peak_memory():
    result = plan_benchmark(["--rows", "20000", "--per-part", "1000"])
    assert result["rows"] == result["items"] == 20000 and result["archives"] == 20
    assert result["rows_per_s"] > 0 and result["peak_rss_mib"] > 0 and result["grouped"]
