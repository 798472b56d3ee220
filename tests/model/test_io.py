"""safetensors + config.json persistence, and loading 256 px weights into a 512 px model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.config import MicroDiTConfig
from model.io import from_pretrained, load_config, load_weights, save_pretrained
from model.microdit import MicroDiT, build_model
from tests.model.helpers import batch


def test_round_trip(tiny_model: MicroDiT, tiny_config: MicroDiTConfig, tmp_path: Path) -> None:
    save_pretrained(tiny_model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "MicroDiT"
    assert "pos_embed" not in load_file(str(tmp_path / "model.safetensors"))
    loaded = from_pretrained(tmp_path)
    assert loaded.config == tiny_config
    latents, text = batch(tiny_config)
    sigma = torch.ones(3)
    assert torch.equal(loaded(latents, sigma, text).sample, tiny_model(latents, sigma, text).sample)


def test_load_weights_into_a_model_with_a_new_position_embedding(
        tiny_model: MicroDiT, tiny_config: MicroDiTConfig, tmp_path: Path) -> None:
    """Stage 3: weights trained at 256 px, model rebuilt at 512 px (2x latents, positions / 2)."""
    save_pretrained(tiny_model, tmp_path)
    big_config = replace(tiny_config, input_size=16, pos_interp_scale=2.0)
    big = load_weights(build_model(big_config), tmp_path)
    for (name, a), (_, b) in zip(tiny_model.named_parameters(), big.named_parameters()):
        assert torch.equal(a, b), name
    assert big.pos_embed.shape == (1, 64, tiny_config.dim)
    torch.testing.assert_close(big.pos_embed.view(8, 8, -1)[::2, ::2],
                               tiny_model.pos_embed.view(4, 4, -1))
    latents, text = batch(big_config)
    assert big(latents, torch.ones(3), text, 0.75).sample.shape == (3, 4, 16, 16)
    same = from_pretrained(tmp_path, input_size=16, pos_interp_scale=2.0)
    assert same.config == big_config


def test_architecture_mismatch_is_refused(tiny_model: MicroDiT, tiny_config: MicroDiTConfig,
                                          tmp_path: Path) -> None:
    save_pretrained(tiny_model, tmp_path)
    with pytest.raises(ValueError, match="depth"):
        load_weights(build_model(replace(tiny_config, depth=2)), tmp_path)
    with pytest.raises(ValueError, match="can be overridden"):
        from_pretrained(tmp_path, dim=128)


def test_unknown_config_key_is_refused(tiny_model: MicroDiT, tmp_path: Path) -> None:
    save_pretrained(tiny_model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "use_rope": True}))
    with pytest.raises(ValueError, match="use_rope"):
        load_config(tmp_path)


def test_dtype_on_load(tiny_model: MicroDiT, tmp_path: Path) -> None:
    save_pretrained(tiny_model, tmp_path)
    loaded = from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16
