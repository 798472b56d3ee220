"""Presets, layer-wise scaling rules and parameter counts (reference.md, "Model")."""

from __future__ import annotations

import pytest
import torch

from model.config import (PRESETS, MicroDiTConfig, backbone_blocks, mixer_blocks, moe_indices,
                          preset)
from model.microdit import MicroDiT, count_parameters
from model.moe import ExpertChoiceMoE


def meta_model(config: MicroDiTConfig) -> MicroDiT:
    """The network on the meta device: parameter shapes without memory or init time."""
    with torch.device("meta"):
        return MicroDiT(config)


@pytest.mark.parametrize(("name", "millions"), [("XL_2", 1165.4), ("Tiny_2", 200.7)])
def test_reference_parameter_counts(name: str, millions: float) -> None:
    assert round(count_parameters(meta_model(preset(name))) / 1e6, 1) == millions


def test_small_presets_stay_small() -> None:
    assert count_parameters(meta_model(preset("demo"))) < 5e6
    assert count_parameters(meta_model(preset("tiny"))) < 1e6


def test_512px_preset_has_the_same_parameters() -> None:
    at_256 = count_parameters(meta_model(preset("XL_2")))
    at_512 = count_parameters(meta_model(preset("XL_2", input_size=64, pos_interp_scale=2.0)))
    assert at_256 == at_512


def test_xl_layerwise_scaling() -> None:
    blocks = backbone_blocks(preset("XL_2"))
    assert len(blocks) == 28
    # Attention: ratio 0.5 -> 512 heads-of-64 pairs; the last block exactly D.
    assert blocks[0].attn_dim == 512 and blocks[-1].attn_dim == 1024
    assert all(b.attn_dim % 128 == 0 for b in blocks)
    assert [b.attn_dim for b in blocks] == sorted(b.attn_dim for b in blocks)
    # Dense SwiGLU: round_up(int(2/3 * int(1024 * 0.5)), 256) = 512; last: int(2/3 * 4096) -> 2816.
    assert blocks[0].ffn_hidden == 512 and not blocks[0].moe
    assert blocks[-1].ffn_hidden == 2816 and not blocks[-1].moe
    # MoE experts keep the nominal width: block 1 has ratio 0.5 + 3.5 / 27.
    assert blocks[1].moe and blocks[1].ffn_hidden == 768


def test_moe_placement() -> None:
    backbone = [i for i, b in enumerate(backbone_blocks(preset("XL_2"))) if b.moe]
    assert backbone == list(range(1, 27, 2))  # never the last block (27)
    mixer = [i for i, b in enumerate(mixer_blocks(preset("XL_2"))) if b.moe]
    assert mixer == [1, 3, 5]
    assert [b.ffn_hidden for b in mixer_blocks(preset("XL_2"))][:2] == [2048, 3072]
    assert moe_indices(4, 0, last_dense=True) == set()
    model = meta_model(preset("XL_2"))
    experts = [m for m in model.modules() if isinstance(m, ExpertChoiceMoE)]
    assert len(experts) == 13 + 3 and all(m.w1.shape[0] == 8 for m in experts)


def test_no_biases_inside_attention_and_ffn() -> None:
    model = meta_model(preset("tiny"))
    for name, _ in model.named_parameters():
        if ".attn." in name or ".cross_attn." in name or ".ffn." in name or "norm" in name:
            assert not name.endswith(".bias"), name


def test_presets_are_factories_with_overrides() -> None:
    assert set(PRESETS) >= {"XL_2", "Tiny_2", "demo", "tiny"}
    config = preset("demo", caption_dim=64)
    assert config.caption_dim == 64 and config.dim == preset("demo").dim
    with pytest.raises(ValueError, match="unknown MicroDiT preset"):
        preset("XXL")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dim", 100, "multiple of head_dim"),
    ("input_size", 9, "multiple of patch_size"),
    ("depth", 0, "depth must be > 0"),
    ("attn_ratio_end", 1.5, "never wider than D"),
    ("expert_capacity", 0.0, "expert_capacity must be > 0"),
])
def test_invalid_configs_are_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preset("tiny", **{field: value})
