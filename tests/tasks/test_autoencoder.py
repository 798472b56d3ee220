"""The latent space of either autoencoder class, read from its config.json (tasks/common/
autoencoder.py): channels, downscale, scale and shift per type, and the encode/decode round
trip through tiny random-init models saved and loaded back with from_pretrained. No services.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC, AutoencoderKL

from tasks.common.autoencoder import (LatentSpace, decode_pixels, encode_raw, latent_space,
                                      space_of)
from tasks.common.encoders import encode_images, load
from tasks.encode.config import EncodeParams
from tasks.encode.tiny import save_tiny_dcae, save_tiny_text_encoder, save_tiny_vae


def test_published_configs_give_their_latent_spaces() -> None:
    # Fields as in the published config.json files (docs/autoencoders.md).
    sdxl = {"_class_name": "AutoencoderKL", "latent_channels": 4,
            "block_out_channels": [128, 256, 512, 512], "scaling_factor": 0.13025}
    flux = {**sdxl, "latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159}
    dc = {"_class_name": "AutoencoderDC", "latent_channels": 32,
          "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
          "scaling_factor": 0.41407}
    assert latent_space(sdxl) == LatentSpace("AutoencoderKL", 4, 8, 0.13025, 0.0)
    assert latent_space(flux) == LatentSpace("AutoencoderKL", 16, 8, 0.3611, 0.1159)
    assert latent_space(dc) == LatentSpace("AutoencoderDC", 32, 32, 0.41407, 0.0)
    assert latent_space(dc).latent_side(512) == 16
    # A KL config with shift_factor null (as diffusers writes it) has no shift.
    assert latent_space({**sdxl, "shift_factor": None}).shift == 0.0
    # A folder written before the class was recorded is a KL VAE.
    assert latent_space({k: v for k, v in sdxl.items() if k != "_class_name"}).kind \
        == "AutoencoderKL"
    with pytest.raises(ValueError, match="AutoencoderTiny"):
        latent_space({**sdxl, "_class_name": "AutoencoderTiny"})


def test_scale_and_shift_invert() -> None:
    space = LatentSpace("AutoencoderKL", 16, 8, scale=0.3611, shift=0.1159)
    z = torch.randn(2, 16, 4, 4)
    assert torch.allclose(space.to_model(z), (z - 0.1159) * 0.3611)
    assert torch.allclose(space.from_model(space.to_model(z)), z, atol=1e-6)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("autoencoders")
    return {"kl": save_tiny_vae(root / "kl"), "dc": save_tiny_dcae(root / "dc"),
            "text": save_tiny_text_encoder(root / "text")}


def test_saved_folders_load_as_their_class(folders: dict[str, Path]) -> None:
    assert json.loads((folders["dc"] / "config.json").read_text())["_class_name"] \
        == "AutoencoderDC"
    kl = load(EncodeParams(vae=str(folders["kl"]), text_encoder=str(folders["text"]),
                           device="cpu"))
    dc = load(EncodeParams(vae=str(folders["dc"]), text_encoder=str(folders["text"]),
                           device="cpu"))
    assert isinstance(kl.vae, AutoencoderKL) and isinstance(dc.vae, AutoencoderDC)
    assert kl.space == LatentSpace("AutoencoderKL", 4, 4, 0.13025, 0.0)
    assert dc.space == LatentSpace("AutoencoderDC", 16, 8, 0.5, 0.0)
    assert space_of(dc.vae) == dc.space


def test_dc_latents_are_deterministic_scaled_and_decode(folders: dict[str, Path]) -> None:
    enc = load(EncodeParams(vae=str(folders["dc"]), text_encoder=str(folders["text"]),
                            device="cpu"))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = encode_images(enc, images, torch.Generator().manual_seed(1))
    b = encode_images(enc, images, torch.Generator().manual_seed(2))
    assert a.shape == (2, 16, 4, 4) and a.dtype.name == "float16"
    assert (a == b).all()  # no posterior: the generator draws nothing
    with torch.no_grad():
        raw = enc.vae.encode(images).latent
        assert torch.allclose(torch.from_numpy(a).float(), (raw * 0.5).half().float())
        assert torch.equal(encode_raw(enc.vae, images, torch.Generator()), raw)
        # decode_pixels undoes the scale before the decoder.
        expected = enc.vae.decode(torch.from_numpy(a).float() / 0.5).sample
    pixels = decode_pixels(enc.vae, torch.from_numpy(a).float())
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.uint8
    assert torch.equal(pixels, ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))


def test_kl_shift_is_applied_on_encode_and_undone_on_decode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2,
                        scaling_factor=0.25, shift_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    space = space_of(loaded)
    assert space == LatentSpace("AutoencoderKL", 4, 2, 0.25, 0.5)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = encode_raw(loaded, images, torch.Generator().manual_seed(0))
        expected = loaded.decode(z).sample
    pixels = decode_pixels(loaded, space.to_model(z))
    assert torch.equal(pixels, ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))


def test_demo_dcae_recipe_trains_saves_and_is_what_the_demo_dcae_profile_builds(tmp_path):
    from tasks.check import preflight
    from tasks.encode.tiny import DCAERecipe, recipe_matches, train_demo_dcae
    from tasks.models import builders
    from tasks.params import load_params

    # A few steps of the recipe: the folder, its recorded scale and cache key (not its quality).
    recipe = DCAERecipe(images=8, held_out=4, steps=2, batch=2)
    folder = train_demo_dcae(tmp_path / "tiny-dcae", recipe)
    record = json.loads((folder / "recipe.json").read_text())
    dc = AutoencoderDC.from_pretrained(folder)
    assert dc.config.scaling_factor == record["scaling_factor"] > 0
    assert latent_space({**dict(dc.config), "_class_name": "AutoencoderDC"}) == LatentSpace(
        "AutoencoderDC", 64, 16, record["scaling_factor"], 0.0)
    assert recipe_matches(folder, recipe) and not recipe_matches(folder, DCAERecipe())

    params = load_params(profile="demo_dcae")
    assert builders(params)[params.encode.vae] is train_demo_dcae
    # The profile's chain (64 channels, 16x, 4x4 latents of 16 tokens) passes the preflight.
    text = tmp_path / "text"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"hidden_size": 64}))
    checked = preflight(dataclasses.replace(params, encode=dataclasses.replace(
        params.encode, vae=str(folder), text_encoder=str(text))))
    assert checked["unchecked"] == []
