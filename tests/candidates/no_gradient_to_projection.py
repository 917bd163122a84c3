import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """The key projection is detached, so it never learns."""

    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        k = F.normalize(self.k_proj(x), dim=-1).detach()
        q = F.normalize(self.q_proj(x), dim=-1)
        return self.o_proj(q * (k * self.v_proj(x)).cumsum(1))
