"""Expert-choice mixture of experts (Zhou et al. 2022), as used in MicroDiT's FFN layers.

Each expert picks its own top-k tokens per sample, so every expert processes exactly B * k
tokens: the expert MLPs are one batched matmul over experts (a grouped GEMM with equal group
sizes) instead of the reference's dense one-hot dispatch, whose einsums cost O(E * k * T * D)
extra multiply-adds and an (B, E, k, T) one-hot tensor per layer. Dispatch is a gather and the
combine an index_add into the token rows; no auxiliary loss is needed because expert choice is
balanced by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tokens_per_expert(tokens: int, num_experts: int, capacity: float) -> int:
    """k = int(capacity * T / E), at most T."""
    return min(tokens, int(capacity * tokens / num_experts))


class ExpertChoiceMoE(nn.Module):
    """E two-layer GELU MLPs (D -> hidden -> D, no biases) behind a softmax router."""

    def __init__(self, dim: int, hidden: int, num_experts: int, capacity: float) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.capacity = capacity
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        experts = self.num_experts
        k = tokens_per_expert(tokens, experts, self.capacity)
        # Routing in at least float32: top-k ties and softmax mass are sensitive to bf16 rounding.
        logits = self.router(x)
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        gates, index = probs.transpose(1, 2).topk(k, dim=-1)  # probs (B, T, E) -> (B, E, k) each

        picked = x.gather(1, index.reshape(batch, experts * k, 1).expand(-1, -1, dim))
        picked = picked.view(batch, experts, k, dim).transpose(0, 1)  # (E, B, k, D)
        picked = picked.reshape(experts, batch * k, dim)  # (E, B * k, D)

        hidden = F.gelu(torch.bmm(picked, self.w1))  # (E, B * k, hidden)
        out = torch.bmm(hidden, self.w2)  # (E, B * k, D)
        out = out * gates.transpose(0, 1).reshape(experts, batch * k, 1).to(out.dtype)

        # Row of each picked token in the flattened (B * T, D) output.
        rows = index + torch.arange(batch, device=x.device).view(batch, 1, 1) * tokens  # (B, E, k)
        rows = rows.transpose(0, 1).reshape(-1)  # (E * B * k,), same order as out
        # Accumulate in at least float32: a token picked by several experts sums their outputs.
        accumulate = torch.promote_types(out.dtype, torch.float32)
        combined = torch.zeros(batch * tokens, dim, device=x.device, dtype=accumulate)
        combined.index_add_(0, rows, out.reshape(-1, dim).to(accumulate))
        return combined.view(batch, tokens, dim).to(out.dtype)  # (B, T, D)
