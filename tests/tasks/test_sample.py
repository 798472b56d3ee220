"""`python -m tasks sample`: prompts in, one grid PNG out, one-line errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from tasks.cli import main
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
