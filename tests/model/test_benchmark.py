"""The training-step benchmark runs end to end on the CPU with a tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_benchmark_times_the_demo_model_through_overrides() -> None:
    # The demo's tiny model runs on 16x16 latents with 64-d caption tokens: the FLOPs must be
    # those of the overridden config, not the bare preset's 8x8 latents.
    results = main(["--preset", "tiny", "--override", "input_size=16", "caption_dim=64",
                    "--caption-len", "24", "--device", "cpu", "--steps", "1", "--warmup", "0",
                    "--batch", "2", "--mask-ratios", "0"])
    overridden = preset("tiny", input_size=16, caption_dim=64)
    expected = 3 * forward_flops(overridden, 0.0, 24) / 1e9
    assert results[0]["train_gflops_per_image"] == round(expected, 2)
    assert expected > 3 * forward_flops(preset("tiny"), 0.0, 24) / 1e9


def test_benchmark_rejects_a_malformed_override() -> None:
    with pytest.raises(ValueError, match="FIELD=INT"):
        main(["--preset", "tiny", "--override", "input_size=big"])
