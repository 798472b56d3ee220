"""The gather/bmm/index_add expert-choice MoE against a slow, obviously correct version."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.moe import ExpertChoiceMoE, tokens_per_expert


def slow_expert_choice(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """Loop over samples and experts: each expert scores every token with the router softmax,
    takes its k best tokens, runs its MLP on each and adds gate * result to that token."""
    batch, tokens, _ = x.shape
    k = int(moe.capacity * tokens / moe.num_experts)
    out = torch.zeros_like(x)
    for b in range(batch):
        probs = torch.softmax(x[b] @ moe.router.weight.T, dim=-1)  # (T, E)
        scores = probs.detach()
        for e in range(moe.num_experts):
            ranked = sorted(range(tokens), key=lambda t: scores[t, e].item(), reverse=True)
            for t in ranked[:k]:
                hidden = F.gelu(x[b, t] @ moe.w1[e])
                out[b, t] = out[b, t] + probs[t, e] * (hidden @ moe.w2[e])
    return out


def make_moe(dim: int = 12, hidden: int = 20, experts: int = 4,
             capacity: float = 2.0) -> ExpertChoiceMoE:
    torch.manual_seed(0)
    moe = ExpertChoiceMoE(dim, hidden, experts, capacity).double()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(std=0.3)
    return moe


@pytest.mark.parametrize(("tokens", "experts", "capacity"),
                         [(16, 4, 2.0), (9, 3, 1.0), (6, 8, 2.0)])
def test_matches_slow_formulation(tokens: int, experts: int, capacity: float) -> None:
    moe = make_moe(experts=experts, capacity=capacity)
    x = torch.randn(3, tokens, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(moe(x), slow_expert_choice(moe, x), rtol=1e-10, atol=1e-12)


def test_gradients_match_slow_formulation() -> None:
    moe = make_moe()
    x = torch.randn(2, 16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.randn_like(x)

    fast_grads = torch.autograd.grad((moe(x) * target).sum(), list(moe.parameters()))
    slow_grads = torch.autograd.grad((slow_expert_choice(moe, x) * target).sum(),
                                     list(moe.parameters()))
    for fast, slow in zip(fast_grads, slow_grads):
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_tokens_per_expert_rule() -> None:
    assert tokens_per_expert(256, 8, 2.0) == 64  # 256 patches at 256 px
    assert tokens_per_expert(64, 8, 2.0) == 16  # 75 % masked
    assert tokens_per_expert(4, 1, 2.0) == 4  # never more than T


def test_tokens_no_expert_picks_get_zero() -> None:
    # With capacity 0.5 and one expert, half of the tokens are left out and get no FFN output.
    moe = make_moe(experts=1, capacity=0.5)
    x = torch.randn(1, 8, 12, dtype=torch.float64)
    out = moe(x)
    assert int((out.abs().sum(-1) > 0).sum()) == 4
