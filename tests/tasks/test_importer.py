"""`python -m tasks import`: a reference checkpoint in, our pretrained folder out."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.io import from_pretrained
from tasks.cli import main
from tests.model.test_reference_import import FIXTURE, relative_error


def test_import_writes_a_folder_that_reproduces_the_reference(tmp_path: Path) -> None:
    kwargs = json.loads((FIXTURE / "reference_config.json").read_text())["kwargs"]
    out = tmp_path / "imported"
    code = main(["import", str(FIXTURE / "reference_state_dict.pt"), "--out", str(out),
                 "--head-dim", str(kwargs["head_dim"]),
                 "--multiple-of", str(kwargs["multiple_of"])])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    net = from_pretrained(out).eval()
    io = load_file(str(FIXTURE / "io.safetensors"))
    with torch.no_grad():
        sample = net(io["x"], io["c_noise"], io["captions"]).sample
    assert relative_error(sample, io["raw_output"]) < 1e-5


def test_import_fails_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["import", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no checkpoint file {tmp_path / 'nope.pt'}"
    # The fixture with the XL_2 defaults: head_dim 64 does not divide its widths.
    code = main(["import", str(FIXTURE / "reference_state_dict.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "head_dim 64" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
