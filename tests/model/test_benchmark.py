"""The training-step benchmark runs end to end on the CPU with a tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.train_step import main
from model.config import preset
from model.flops import forward_flops


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    results = main(["--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1",
                    "--batch", "2", "--mask-ratios", "0.75,0", "--json", str(out)])
    assert [r["mask_ratio"] for r in results] == [0.75, 0.0]
    for result in results:
        assert result["images_per_s"] > 0 and result["peak_memory_gib"] > 0
        assert result["mfu"] is None  # no peak known for a CPU
    expected = 3 * forward_flops(preset("tiny"), 0.75) / 1e9
    assert results[0]["train_gflops_per_image"] == round(expected, 2)
    report = json.loads(out.read_text())
    assert report["bench"]["compile"] is False and report["results"] == results
