"""Reference MicroDiT weights (SonyResearch/micro_diffusion layout) map onto model/ exactly.

The fixture (tests/fixtures/reference-microdit/, a copy of ../shared/fixtures/; README there) is
a small network with every feature on, saved by the reference code with its inputs and raw
outputs, plus the key and shape list of the real XL_2 state dict that the released checkpoints
hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infra.settings import REPO_ROOT
from model.config import preset
from model.layers import sincos_pos_embed_2d
from model.microdit import MicroDiT
from model.reference_import import convert, import_reference, reference_config, rename

# A copy of ../shared/fixtures/reference-microdit (README there and here), kept in the repository
# so a checkout anywhere, CI's included, has it.
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "reference-microdit"


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    assert (FIXTURE / "reference_state_dict.pt").is_file(), f"reference fixture missing: {FIXTURE}"
    return FIXTURE


def fixture_kwargs(folder: Path) -> dict:
    """What the shapes do not fix, as the reference constructor was called."""
    kwargs = json.loads((folder / "reference_config.json").read_text())["kwargs"]
    return {"head_dim": kwargs["head_dim"], "multiple_of": kwargs["multiple_of"],
            "expert_capacity": kwargs["expert_capacity"], "norm_eps": kwargs["norm_eps"]}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()


def test_imported_weights_reproduce_the_reference_raw_output(fixture_dir: Path) -> None:
    state = torch.load(fixture_dir / "reference_state_dict.pt", weights_only=True)
    net = import_reference(state, **fixture_kwargs(fixture_dir))
    io = load_file(str(fixture_dir / "io.safetensors"))
    with torch.no_grad():
        out = net(io["x"], io["c_noise"], io["captions"]).sample
    assert relative_error(out, io["raw_output"]) < 1e-5


def test_the_config_is_read_off_the_shapes(fixture_dir: Path) -> None:
    kwargs = json.loads((fixture_dir / "reference_config.json").read_text())["kwargs"]
    state = torch.load(fixture_dir / "reference_state_dict.pt", weights_only=True)
    cfg = reference_config(state, **fixture_kwargs(fixture_dir))
    assert (cfg.input_size, cfg.dim, cfg.depth, cfg.mixer_dim, cfg.mixer_depth) == (
        kwargs["input_size"], kwargs["dim"], kwargs["depth"], kwargs["patch_mixer_dim"],
        kwargs["patch_mixer_depth"])
    assert (cfg.caption_dim, cfg.num_experts, cfg.moe_every, cfg.pos_interp_scale) == (
        kwargs["caption_channels"], kwargs["num_experts"], kwargs["experts_every_n"],
        kwargs["pos_interp_scale"])


def test_a_wrong_head_dim_is_refused(fixture_dir: Path) -> None:
    """head_dim is not stored, but it sets the rounded attention widths: 16 gives other shapes."""
    state = torch.load(fixture_dir / "reference_state_dict.pt", weights_only=True)
    with pytest.raises(ValueError, match=r"shape differs: \['blocks\.0\.attn\.qkv\.weight"):
        import_reference(state, **{**fixture_kwargs(fixture_dir), "head_dim": 16})


def xl2_state(folder: Path, pos_interp_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The XL_2 layout as meta tensors; the two buffers hold what the reference stores."""
    shapes = json.loads((folder / "xl2_state_dict_shapes.json").read_text())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    grid = int(shapes["pos_embed"][1] ** 0.5)
    state["pos_embed"] = sincos_pos_embed_2d(shapes["pos_embed"][2], grid,
                                             pos_interp_scale).unsqueeze(0)
    state["mask_token"] = torch.zeros(shapes["mask_token"])
    return state


def test_the_xl2_layout_maps_with_nothing_left_over_or_missing(fixture_dir: Path) -> None:
    state = xl2_state(fixture_dir)
    cfg = reference_config(state)
    assert cfg == preset("XL_2")
    mapped = convert(state, cfg)
    assert len(mapped) == len(state) - 2  # every parameter; the two buffers need no counterpart
    with torch.device("meta"):
        ours = MicroDiT(cfg).state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def test_512px_checkpoints_read_their_grid_and_position_scale(fixture_dir: Path) -> None:
    state = xl2_state(fixture_dir)
    state["pos_embed"] = sincos_pos_embed_2d(1024, 32, 2.0).unsqueeze(0)
    cfg = reference_config(state)
    assert (cfg.input_size, cfg.pos_interp_scale) == (64, 2.0)


def test_a_key_of_another_layout_is_named(fixture_dir: Path) -> None:
    state = xl2_state(fixture_dir)
    state["blocks.3.mlp.extra.weight"] = state.pop("blocks.3.mlp.w1")
    with pytest.raises(ValueError,
                       match=r"blocks\.3\.mlp\.extra\.weight.*missing.*blocks\.3\.ffn\.w1"):
        convert(state, reference_config(state))


def test_a_ddp_prefix_is_stripped(fixture_dir: Path) -> None:
    state = {f"module.{k}": v for k, v in xl2_state(fixture_dir).items()}
    assert len(convert(state, reference_config(state))) == len(state) - 2


def test_rename_rules() -> None:
    assert rename("blocks.5.cross_attn.kv_linear.weight") == "blocks.5.cross_attn.kv.weight"
    assert rename("patch_mixer.1.mlp.gate.weight") == "mixer.1.ffn.router.weight"
    assert rename("patch_mixer_map_xout.1.weight") == "mixer_out.1.weight"
    assert rename("y_emb_preprocess.mlp.w3.weight") == "caption_block.ffn.w3.weight"
    assert rename("final_layer.norm_final.weight") == "final.norm.weight"
    assert rename("something.else") is None
