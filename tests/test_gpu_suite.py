"""The GPU suite's own parts run on the CPU: a training case with the loader loop, the merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_train import main as gpu_train
from benchmarks.local_shards import write_local_shards


def test_train_case_times_the_step_and_the_loader_loop(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    manifest = write_local_shards(shards, shards=2, per_shard=4, caption_dim=32, latent_side=8)
    assert manifest.samples == 8 and all(Path(s.uri).exists() for s in manifest.shards)
    out = tmp_path / "train-ours-m75.json"
    gpu_train(["--impl", "ours", "--preset", "tiny", "--device", "cpu", "--batch", "2",
               "--steps", "1", "--warmup", "1", "--no-compile", "--dtype", "fp32",
               "--group-dir", str(tmp_path / "group"), "--profile-steps", "1",
               "--loader-shards", str(shards), "--loader-steps", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["images_per_s"] > 0 and "aten::" in result["profile"]
    assert result["loader"]["loader_steps_per_s"] > 0 and result["loader"]["corrupt_shards"] == []
    (tmp_path / "parts.tsv").write_text("train\t0\t5\t240\n")
    subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite_merge", str(tmp_path),
                    str(tmp_path / "suite.json")], check=True, capture_output=True)
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["train"]["cases"]["ours-m75"]["images_per_s"] == result["images_per_s"]
    assert suite["train"]["ratio_mask0.75_b256"] is None  # no reference case ran
    assert suite["loader"]["loader_over_synthetic"] > 0 and suite["parts"]["train"]["rc"] == "0"
