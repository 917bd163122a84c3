import torch
from torch import nn


class DeltaNet(nn.Module):
    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        for row in range(2000):
            print("debug", row, "x" * 1000)
        return self.o_proj(self.v_proj(x).cumsum(1)) + self.q_proj(x) * self.k_proj(x)
