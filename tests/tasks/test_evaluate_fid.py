"""FID with the offline TorchScript Inception through torchmetrics: the metric's real behaviour.

A handful of 64 px images keeps this under a minute on CPU (each image is resized to 299 px for
Inception, ~0.3 s; each FID computation is an eigen-decomposition of a 2048x2048 matrix, ~3 s).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from infra.config import ConfigError, build
from tasks.common.grid import sample_grid
from tasks.common.images import center_crop_resize
from tasks.evaluate.config import EvaluateParams
from tasks.evaluate.inception import (FID_HELPER, NUM_FEATURES, inception_id, inception_path,
                                      load_inception, resize_bicubic)
from tasks.evaluate.metrics import (RealStats, add_images, fid_value, new_fid, png_to_tensor,
                                    real_stats, set_real_stats, tensor_to_png)
from tasks.evaluate.real_stats import image_tensor

NUM_IMAGES = 8


@pytest.fixture(scope="module")
def inception():
    torch.set_num_threads(1)
    return load_inception()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Smooth random colour fields, (N, 3, 64, 64) float in [0, 255]."""
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(NUM_IMAGES, 3, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(low, size=64, mode="bilinear") * 255


def to_uint8(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x.clamp(0, 255).round().to(torch.uint8))


@pytest.fixture(scope="module")
def cached_real(inception, images) -> bytes:
    """The real side computed once and serialised, as real_stats.py caches it in S3."""
    fid = new_fid(inception)
    assert add_images(fid, to_uint8(images), real=True, batch_size=4) == NUM_IMAGES
    return real_stats(fid).to_bytes()


def fid_against_real(inception, cached_real: bytes, generated: list[torch.Tensor]) -> float:
    fid = new_fid(inception)
    set_real_stats(fid, RealStats.from_bytes(cached_real))
    add_images(fid, generated, real=False, batch_size=NUM_IMAGES)
    return fid_value(fid)


def test_features_are_2048_d_pool_outputs(inception, images):
    features = inception(torch.stack(to_uint8(images[:2])))
    assert features.shape == (2, NUM_FEATURES)
    assert features.min() >= 0  # average pool of ReLU outputs
    assert features.std() > 0
    with pytest.raises(TypeError, match="uint8"):
        inception(images[:1])


def test_inception_file_has_the_documented_layer_shapes():
    """docs/evaluation.md: 94 convolutions, each with a beta-only batch norm; 21,751,136
    convolution weights and 17,216 batch-norm channels (torchvision's trunk count when two
    affine parameters are counted per channel); the FID graph's pooling quirks."""
    net = torch.jit.load(str(inception_path(FID_HELPER)), map_location="cpu")
    convs = [m for m in net.modules() if m.original_name == "Conv2dLayer"]
    params = dict(net.named_parameters())
    weights = sum(p.numel() for n, p in params.items() if n.endswith(".weight"))
    channels = sum(p.numel() for n, p in params.items() if n.endswith(".beta"))
    assert len(convs) == 94 and {n.rsplit(".", 1)[1] for n in params} == {
        "weight", "beta", "mean", "var"}
    assert (weights, channels) == (21_751_136, 17_216)
    assert weights + 2 * channels == 27_161_264 - 3_326_696 - 2_049_000
    # The FID graph's quirks: mixed-block average pools exclude padding; mixed_10 max-pools.
    modules = dict(net.named_modules())
    mixed_pools = [m for n, m in modules.items()
                   if m.original_name == "AvgPool2d" and ".mixed" in n]
    assert len(mixed_pools) == 8 and not any(m.count_include_pad for m in mixed_pools)
    assert modules["net.layers.mixed_10.tower_2_pool"].original_name == "MaxPool2d"


def test_inception_identity_names_the_weights_file():
    assert inception_id("fid-helper").startswith("default_1.pt:sha256:")
    with pytest.raises(FileNotFoundError):
        load_inception("no/such/inception.pt")


def test_resize_to_inception_input_keeps_a_constant_image_constant():
    flat = torch.full((1, 3, 64, 48), 77.0)
    resized = resize_bicubic(flat, 299)
    assert resized.shape == (1, 3, 299, 299)
    assert torch.allclose(resized, flat.new_full(resized.shape, 77.0), atol=1e-3)


def test_fid_of_a_set_against_itself_is_zero(inception, images, cached_real):
    assert RealStats.from_bytes(cached_real).count == NUM_IMAGES
    assert abs(fid_against_real(inception, cached_real, to_uint8(images))) < 1e-2


def test_fid_rises_monotonically_with_perturbation(inception, images, cached_real):
    # One fixed noise direction scaled up; small levels, because with 8 images in 2048-d the
    # covariance term saturates once the sets no longer overlap (docs/evaluation.md).
    direction = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    scores = [fid_against_real(inception, cached_real, to_uint8(images + level * direction))
              for level in (1.0, 2.0, 4.0)]
    assert 1e-2 < scores[0] < scores[1] < scores[2], scores


def test_real_preprocessing_is_short_side_resize_and_center_crop():
    # 300x200: red 50 px bands left and right, green centre; the crop keeps only the centre.
    image = Image.new("RGB", (300, 200), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 50, 200))
    image.paste((255, 0, 0), (250, 0, 300, 200))
    out = center_crop_resize(image, 128)
    assert out.size == (128, 128)
    pixels = image_tensor(out).float()
    # Bicubic ringing touches the 2 px next to the band edge; the rest is pure centre green.
    centre = pixels[:, :, 2:-2]
    assert centre[0].max() < 10 and centre[1].min() > 245
    assert pixels[0, :, 0].mean() < 128  # no full red column survives the crop


def test_png_round_trip_is_lossless():
    image = torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)
    assert torch.equal(png_to_tensor(tensor_to_png(image)), image)


def test_grid_layout():
    tiles = [torch.full((3, 10, 12), i * 40, dtype=torch.uint8) for i in range(5)]
    grid = sample_grid(tiles)
    assert grid.size == (3 * 12 + 4 * 2, 2 * 10 + 3 * 2)  # 3 columns, 2 rows, 2 px padding
    assert grid.getpixel((2 + 12 + 2 + 5, 2 + 5)) == (40, 40, 40)  # second tile, first row


def test_params_are_validated():
    assert build(EvaluateParams, {"num_samples": 30_000}).num_samples == 30_000
    with pytest.raises(ConfigError, match="grid_images"):
        build(EvaluateParams, {"grid_images": 10})
    with pytest.raises(ConfigError, match="guidance"):
        build(EvaluateParams, {"guidance": 0.5})
    with pytest.raises(ConfigError, match="unknown key"):
        build(EvaluateParams, {"num_sample": 10})
