import math

import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """Full causal attention computed one block of queries at a time: no length x length tensor, so its
    memory looks linear, but each block reads every earlier key, so its time is quadratic in length."""

    def __init__(self, d_model: int, num_heads: int = 4, block: int = 64) -> None:
        super().__init__()
        self.num_heads, self.block = num_heads, block
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.num_heads, -1).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        outs = []
        for start in range(0, t, self.block):
            end = min(t, start + self.block)
            scores = q[:, :, start:end] @ k[:, :, :end].transpose(-1, -2) / math.sqrt(q.shape[-1])
            rows = torch.arange(start, end, device=x.device)[:, None]
            cols = torch.arange(end, device=x.device)[None, :]
            attn = F.softmax(scores.masked_fill(cols > rows, float("-inf")), dim=-1)
            outs.append(attn @ v[:, :, :end])
        return self.o_proj(torch.cat(outs, dim=2).transpose(1, 2).reshape(b, t, d))
