import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """Normalises by (1 + 1e-3) - 1, which is 1e-3 in float32 but exactly 0 in bfloat16 (eps 7.8e-3)."""

    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        v = self.v_proj(x)
        step = (v.new_ones(()) + 1e-3) - 1
        k, q = F.normalize(self.k_proj(x), dim=-1), F.normalize(self.q_proj(x), dim=-1)
        return self.o_proj(q * (k * v).cumsum(1) * (1e-3 / step))
