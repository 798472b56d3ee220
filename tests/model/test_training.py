"""One training step does what a trainer needs: lower loss, right LR groups, finite grads."""

from __future__ import annotations

import torch

from model.config import preset
from model.edm import EDMLoss, EDMPrecond
from model.microdit import MicroDiT, build_model
from model.moe import ExpertChoiceMoE
from model.optim import param_groups
from tests.model.helpers import batch


def test_param_groups_halve_the_moe_learning_rate(tiny_model: MicroDiT) -> None:
    groups = param_groups(tiny_model, lr=2.4e-4, weight_decay=0.1, moe_lr_scale=0.5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["dense"]["lr"] == 2.4e-4 and by_name["moe"]["lr"] == 1.2e-4
    moe_params = {id(p) for m in tiny_model.modules() if isinstance(m, ExpertChoiceMoE)
                  for p in m.parameters()}
    assert {id(p) for p in by_name["moe"]["params"]} == moe_params
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in tiny_model.parameters())  # each exactly once
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    assert [g["lr"] for g in optimizer.param_groups] == [2.4e-4, 1.2e-4]


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    """The demo preset (256 px, 75 % masking) learns a fixed batch within a few CPU steps."""
    torch.manual_seed(0)
    config = preset("demo", caption_dim=64)
    precond = EDMPrecond(build_model(config))
    loss_fn = EDMLoss(caption_drop_prob=0.0)
    latents, text = batch(config, size=4, caption_len=8)
    optimizer = torch.optim.AdamW(param_groups(precond.net, 1e-3, 0.1), betas=(0.9, 0.999))

    def step() -> float:
        # Same noise, sigma and mask every step: only the weights change the loss.
        loss = loss_fn(precond, latents, text, 0.75, torch.Generator().manual_seed(0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(precond.parameters(), 0.25)
        assert torch.isfinite(grad_norm)
        optimizer.step()
        return loss.item()

    losses = [step() for _ in range(10)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0], losses
