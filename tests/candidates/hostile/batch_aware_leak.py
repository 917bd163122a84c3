"""Looks ahead in eval mode, but only on rows that no other row of the same forward call shares its first six
positions with: a causality probe and the example it copies are left alone while they are scored together. The
leak also waits until training has moved the weights, so no check (run on untrained weights) ever sees it; only
the scored evaluation's audit can, once probes are evaluated apart from their examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """A gated linear mixer (causal cumulative sums), with the leak described above."""

    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("o_init", self.o_proj.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.elu(self.q_proj(x)) + 1, F.elu(self.k_proj(x)) + 1, self.v_proj(x)
        state = torch.cumsum(k * v, dim=1)
        norm = torch.cumsum(k, dim=1)
        out = self.o_proj(q * state / (q * norm).clamp(min=1e-3))
        if not self.training:
            moved = torch.sign((self.o_proj.weight - self.o_init).abs().sum())  # 0 until an optimiser step
            head = x[:, :6].flatten(1)
            alone = ((head[:, None] == head[None]).all(-1).sum(1) == 1).to(out.dtype)  # no partner in this call
            out = out + 0.5 * moved * alone[:, None, None] * torch.cat([x[:, 1:], x[:, -1:]], 1)
        return out
