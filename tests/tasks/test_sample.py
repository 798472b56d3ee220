"""`python -m tasks sample`: prompts in, one grid PNG out, one-line errors."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.cli import main
from tasks.common.grid import LABELLED_MIN_PX, PAD, sample_grid
from tasks.export import MicroDiTPipeline
from tasks.export.export import export_run
from tests.tasks.test_export import checkpoint, params  # noqa: F401  (module fixtures)


def test_sample_writes_a_grid(params: SimpleNamespace, checkpoint: Path,  # noqa: F811
                              tmp_path: Path, capsys) -> None:
    model = export_run(str(checkpoint), params, tmp_path / "pipe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue sphere\n\nemoji 🐱\n")
    out = tmp_path / "grid.png"
    code = main(["sample", "--prompt", "a red cube", "--prompts-file", str(prompts),
                 "--model", str(model), "--n", "2", "--seed", "0", "--guidance", "5",
                 "--steps", "3", "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert "6 images (3 prompt(s) x 2)" in capsys.readouterr().out
    grid = Image.open(out)
    side = 32  # tiny VAE: 8 latent px x 4
    assert grid.size[0] > 3 * side and grid.size[1] > 2 * side  # 3 x 2 tiles


def test_sample_errors_are_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert main(["sample", "--prompt", "x", "--model", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no model folder {missing}"
    assert main(["sample", "--prompt", "x", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no model in {tmp_path}") and "\n" not in err
    assert main(["sample", "--model", str(tmp_path)]) == 2
    assert "no prompt" in capsys.readouterr().err


def test_sample_defaults_to_the_evaluated_guidance_and_steps(
        params: SimpleNamespace, checkpoint: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    """An export scored at guidance 2 and 3 steps samples at those unless told otherwise, and
    draws exactly what the pipeline draws at them (the flags still win)."""
    evaluated = SimpleNamespace(encode=params.encode,
                                evaluate=replace(params.evaluate, guidance=2.0, steps=3))
    model = export_run(str(checkpoint), evaluated, tmp_path / "pipe")
    default, flagged = tmp_path / "default.png", tmp_path / "flagged.png"
    assert main(["sample", "--prompt", "a red cube", "--model", str(model), "--n", "1",
                 "--device", "cpu", "--out", str(default)]) == 0
    assert "at guidance 2, 3 steps" in capsys.readouterr().out
    assert main(["sample", "--prompt", "a red cube", "--model", str(model), "--n", "1",
                 "--guidance", "5", "--steps", "2", "--device", "cpu",
                 "--out", str(flagged)]) == 0
    assert "at guidance 5, 2 steps" in capsys.readouterr().out

    pipe = MicroDiTPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(["a red cube"], num_inference_steps=3, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    side = expected.shape[0] * math.ceil(LABELLED_MIN_PX / expected.shape[0])
    tile = np.asarray(Image.open(default).convert("RGB"))[PAD:PAD + side, PAD:PAD + side]
    assert np.array_equal(tile[::side // expected.shape[0], ::side // expected.shape[0]],
                          expected)
    assert not np.array_equal(np.asarray(Image.open(flagged).convert("RGB")),
                              np.asarray(Image.open(default).convert("RGB")))


def test_each_tile_is_labelled_with_its_prompt() -> None:
    """The label strip under a tile holds ink exactly where a prompt was written."""
    tiles = [torch.full((3, 16, 16), 255, dtype=torch.uint8) for _ in range(3)]
    plain = np.asarray(sample_grid(tiles).convert("L"))
    grid = np.asarray(sample_grid(tiles, ["a red cube", "", "a blue sphere"]).convert("L"))
    side = 16 * math.ceil(LABELLED_MIN_PX / 16)
    assert plain.shape == (2 * 16 + 3 * PAD, 2 * 16 + 3 * PAD)
    assert grid.shape[1] == 2 * side + 3 * PAD and grid.shape[0] > 2 * side + 3 * PAD
    strip = slice(PAD + side, PAD + side + 12)  # the first label line under row 0
    first, second = (grid[strip, PAD + i * (side + PAD):PAD + i * (side + PAD) + side]
                     for i in range(2))
    assert (first < 128).any() and not (second < 128).any()
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        sample_grid(tiles, ["a", "b"])
