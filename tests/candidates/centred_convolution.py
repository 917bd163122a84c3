import torch
import torch.nn.functional as F
from torch import nn


class DeltaNet(nn.Module):
    """A short convolution padded on both sides: centred, so it reads the next tokens."""

    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.conv = nn.Conv1d(d_model, d_model, 5, padding=2, groups=d_model, bias=False)

    def forward(self, x):
        v = F.silu(self.conv(self.v_proj(x).transpose(1, 2))).transpose(1, 2)
        k = F.normalize(self.k_proj(x), dim=-1)
        return self.o_proj((k * v).cumsum(1) * F.normalize(self.q_proj(x), dim=-1))
