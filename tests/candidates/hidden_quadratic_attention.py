import math

import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """Called a linear mixer, but it builds the full causal attention matrix: quadratic in length."""

    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.num_heads, -1).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.o_proj((attn @ v).transpose(1, 2).reshape(b, t, d))
