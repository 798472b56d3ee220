"""Activation checkpointing of the DiT blocks changes memory, never the gradients."""

from __future__ import annotations

import torch

from model.config import preset
from model.edm import EDMLoss, EDMPrecond
from model.microdit import build_model


def _grads(checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = build_model(preset("tiny", moe_every=2))
    for p in net.parameters():  # leave the zero-initialised start: every block contributes
        p.data.add_(torch.randn_like(p) * 0.02)
    net.activation_checkpointing = checkpointing
    x = torch.randn(3, net.config.latent_channels, net.config.input_size, net.config.input_size,
                    generator=torch.Generator().manual_seed(1))
    text = torch.randn(3, 77, net.config.caption_dim, generator=torch.Generator().manual_seed(2))
    loss = EDMLoss(caption_drop_prob=0.0)(EDMPrecond(net), x, text, 0.5,
                                          torch.Generator().manual_seed(3))
    loss.backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_identical_gradients_with_and_without_checkpointing(monkeypatch):
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("model.microdit.checkpoint", counted)
    plain = _grads(False)
    assert not calls
    recomputed = _grads(True)
    cfg = preset("tiny")
    assert len(calls) == cfg.depth + cfg.mixer_depth  # every block went through it
    assert plain.keys() == recomputed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=0)
