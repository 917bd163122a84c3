import os

import torch
from torch import nn


class DeltaNet(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.scale = float(os.environ.get("SCALE", "1"))

    def forward(self, x):
        return self.proj(x.cumsum(1)) * self.scale
