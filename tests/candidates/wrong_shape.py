import torch
from torch import nn


class DeltaNet(nn.Module):
    def __init__(self, d_model: int, num_heads: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model // 2, bias=False)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        mixed = self.v(x).cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device)[:, None]
        return self.proj(mixed + self.q(x) * self.k(x))
