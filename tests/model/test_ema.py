"""EMA with a half-life in images: the formula, wrappers and that it really moves."""

from __future__ import annotations

import pytest
import torch

from model.ema import EMA, unwrap
from model.microdit import MicroDiT, build_model


def shift_all(model: MicroDiT, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(value)


def test_half_life_is_counted_in_images(tiny_model: MicroDiT) -> None:
    ema = EMA(tiny_model, half_life_images=1000)
    start = [p.clone() for p in ema.model.parameters()]
    shift_all(tiny_model, 1.0)
    # One update after exactly one half-life of images: half-way to the new weights.
    assert ema.update(tiny_model, images_seen=1000) == pytest.approx(0.5)
    for averaged, before in zip(ema.model.parameters(), start):
        torch.testing.assert_close(averaged, before + 0.5)
    # Ten updates of 100 images decay as much as one update of 1000.
    assert ema.beta(1100) == pytest.approx(0.5 ** 0.1)
    assert ema.images_seen == 1000


def test_batch_size_does_not_change_the_average(tiny_config) -> None:
    model = build_model(tiny_config)
    coarse, fine = EMA(model, 512), EMA(model, 512)
    shift_all(model, 1.0)
    coarse.update(model, 256)
    for seen in range(32, 257, 32):
        fine.update(model, seen)
    for a, b in zip(coarse.model.parameters(), fine.model.parameters()):
        torch.testing.assert_close(a, b)


def test_rampup_caps_the_half_life(tiny_model: MicroDiT) -> None:
    ema = EMA(tiny_model, half_life_images=1e6, rampup_ratio=0.05)
    # At 1000 images the half-life is min(1e6, 50) images.
    assert ema.beta(1000) == pytest.approx(0.5 ** (1000 / 50))


def test_ema_is_a_frozen_copy_and_rejects_going_back(tiny_model: MicroDiT) -> None:
    ema = EMA(tiny_model, 100)
    assert ema.model is not tiny_model and not ema.model.training
    assert not any(p.requires_grad for p in ema.model.parameters())
    ema.update(tiny_model, 10)
    with pytest.raises(ValueError, match="backwards"):
        ema.update(tiny_model, 5)


def test_update_through_a_compiled_wrapper(tiny_model: MicroDiT) -> None:
    compiled = torch.compile(tiny_model)  # wraps only; nothing is compiled until called
    assert unwrap(compiled) is tiny_model
    ema = EMA(compiled, 10)
    shift_all(tiny_model, 2.0)
    ema.update(compiled, 10)
    first = next(ema.model.parameters())
    torch.testing.assert_close(first, next(tiny_model.parameters()) - 1.0)


def test_state_round_trip(tiny_model: MicroDiT, tiny_config) -> None:
    ema = EMA(tiny_model, 100)
    shift_all(tiny_model, 1.0)
    ema.update(tiny_model, 50)
    restored = EMA(build_model(tiny_config), 100)
    restored.load_state_dict(ema.state_dict())
    assert restored.images_seen == 50
    for a, b in zip(ema.model.parameters(), restored.model.parameters()):
        assert torch.equal(a, b)


def test_updates_follow_the_module_they_are_given(tiny_config) -> None:
    """The parameter pairing is built once per trained module, not reused for another one."""
    first, second = build_model(tiny_config), build_model(tiny_config)
    ema = EMA(first, 100)
    shift_all(first, 1.0)
    ema.update(first, 100)  # half-way to first + 1
    with torch.no_grad():
        for p, q in zip(second.parameters(), first.parameters()):
            p.copy_(q - 4.0)  # second = first - 4
    ema.update(second, 200)  # half-way from (first - 0.5) to (first - 4)
    for averaged, trained in zip(ema.model.parameters(), first.parameters()):
        torch.testing.assert_close(averaged, trained - 2.25)


def test_updating_every_k_steps_keeps_the_half_life_in_images(tiny_config) -> None:
    """train.ema_every = 4: one update per 4 steps of 32 images decays as 4 updates of 32."""
    model = build_model(tiny_config)
    every, sparse = EMA(model, 512), EMA(model, 512)
    shift_all(model, 1.0)  # the weights then hold still, as between two sparse updates
    for step in range(1, 9):
        every.update(model, 32 * step)
        if step % 4 == 0:
            sparse.update(model, 32 * step)
    assert sparse.beta(32 * 12) == pytest.approx(0.5 ** (128 / 512))
    for a, b in zip(every.model.parameters(), sparse.model.parameters()):
        torch.testing.assert_close(a, b)
