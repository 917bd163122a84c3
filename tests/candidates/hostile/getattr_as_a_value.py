"""Reaches torch.from_file through getattr passed as a value (`functools.reduce(getattr, [a name built at run
time], torch)`), which no rule on names or attribute chains sees; the kernel fence would still stop the write."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def delta_rule_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, chunk_size: int = 64
) -> torch.Tensor:
    """Chunkwise-parallel delta rule: S_t = S_{t-1} - beta_t k_t (S_{t-1}^T k_t - v_t)^T, o_t = S_t^T q_t / sqrt(Dk).

    q, k: [B, H, T, Dk] (L2-normalised), v: [B, H, T, Dv], beta: [B, H, T]. Returns o: [B, H, T, Dv].
    Within a chunk of C tokens the recurrence is solved at once (WY form: a C x C unit lower-triangular
    solve); only the state S [Dk, Dv] is carried from chunk to chunk, so the cost is linear in T.
    Computed in float32; equals `mixerlab.ops.naive.delta_rule_recurrent` within rounding.
    """
    out_dtype = v.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
        batch, heads, length, dk = k.shape
        dv = v.shape[-1]
        chunk = min(chunk_size, length)
        pad = (-length) % chunk
        if pad:  # zero keys/values/betas at the end change nothing before them
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            beta = F.pad(beta, (0, pad))
        n = (length + pad) // chunk
        q, k, v = (t.reshape(batch, heads, n, chunk, -1) for t in (q, k, v))
        beta = beta.reshape(batch, heads, n, chunk, 1)
        q = q * dk**-0.5

        k_beta = k * beta
        eye = torch.eye(chunk, device=q.device, dtype=q.dtype)
        a = eye + (k_beta @ k.transpose(-1, -2)).tril(-1)
        uw = torch.linalg.solve_triangular(a, torch.cat([v * beta, k_beta], -1), upper=False, unitriangular=True)
        u, w = uw.split([dv, dk], -1)
        attn = (q @ k.transpose(-1, -2)).tril()  # intra-chunk scores, j <= i

        state = q.new_zeros(batch, heads, dk, dv)
        outputs = []
        for i in range(n):
            u_i = u[:, :, i] - w[:, :, i] @ state  # values corrected by what the state already predicts
            outputs.append(q[:, :, i] @ state + attn[:, :, i] @ u_i)
            state = state + k[:, :, i].transpose(-1, -2) @ u_i
        o = torch.stack(outputs, 2).reshape(batch, heads, n * chunk, dv)[:, :, :length]
    return o.to(out_dtype)


class ShortConvolution(nn.Conv1d):
    """Causal depthwise convolution over time, then SiLU: x [B, T, C] -> [B, T, C]."""

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.transpose(1, 2))[..., : x.shape[1]]
        return F.silu(y).transpose(1, 2)


class DeltaNet(nn.Module):
    """DeltaNet sequence mixer.

    Args:
        d_model: width of the model (input and output).
        num_heads: heads; d_model must be divisible by it (4, as fla's default).
        conv_size: kernel of the short causal convolutions on q, k, v (4).
        chunk_size: tokens per chunk of the chunkwise-parallel form (64).
        norm_eps: epsilon of the per-head output RMSNorm (1e-5).
    """

    def __init__(
        self, d_model: int, num_heads: int = 4, conv_size: int = 4, chunk_size: int = 64, norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.b_proj = nn.Linear(d_model, num_heads, bias=False)
        self.q_conv = ShortConvolution(d_model, conv_size)
        self.k_conv = ShortConvolution(d_model, conv_size)
        self.v_conv = ShortConvolution(d_model, conv_size)
        self.o_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The sequence-mixing op on head-first tensors; fla's kernel variant overrides this."""
        return delta_rule_chunkwise(q, k, v, beta, self.chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q = self.split_heads(self.q_conv(self.q_proj(x)))
        k = self.split_heads(self.k_conv(self.k_proj(x)))
        v = self.split_heads(self.v_conv(self.v_proj(x)))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)  # [B, H, T]
        o = self.o_norm(self.mix(q, k, v, beta))
        return self.o_proj(o.transpose(1, 2).reshape(batch, length, d_model))


functools.reduce(getattr, ["".join(["from", "_", "file"])], torch)("/tmp/mixerlab-hostile-from-file.bin", shared=True, size=16)
