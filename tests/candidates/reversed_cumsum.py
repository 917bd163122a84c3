import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """A 'global context' term computed with a reversed cumulative sum: every position sees the future."""

    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        q, k, v = F.normalize(self.q_proj(x), dim=-1), F.normalize(self.k_proj(x), dim=-1), self.v_proj(x)
        past = (k * v).cumsum(1)
        future = (k * v).flip(1).cumsum(1).flip(1)
        return self.o_proj(q * (past + 0.1 * future))
