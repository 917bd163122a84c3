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
        state = torch.zeros(x.shape[0], x.shape[2], x.shape[2])
        t = 0
        while t < x.shape[1]:  # the index is never advanced: the loop never ends
            state = state * 0.9 + self.k_proj(x[:, t]).unsqueeze(-1) * self.v_proj(x[:, t]).unsqueeze(-2)
        return self.o_proj(x)
