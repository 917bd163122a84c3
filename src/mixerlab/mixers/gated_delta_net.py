"""Gated DeltaNet: the delta rule with a data-dependent decay (Yang, Kautz, Hatamizadeh, "Gated Delta
Networks", ICLR 2025). mixerlab's second baseline `gated_delta_net_4layer`.

Self-contained like every candidate file (docs/candidates.md). Layer, following fla's `GatedDeltaNet`:
q, k, v projections -> causal depthwise conv (kernel 4) + SiLU -> L2-normalised q, k -> beta = sigmoid(W_b x),
g = -exp(A_log) * softplus(W_a x + dt_bias) per head -> gated delta rule -> RMSNorm gated by SiLU(W_g x)
-> output projection. fla's defaults (head_dim 256, 6 heads) suit 2k-wide models; at width 128 we use
4 heads with 32-dim keys and 64-dim values (fla's expand_v=2) and keep the output gate: 134,216
parameters at d_model=128.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gated_delta_rule_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, chunk_size: int = 64
) -> torch.Tensor:
    """Chunkwise gated delta rule: S_t = a_t S_{t-1} - beta_t k_t (a_t S_{t-1}^T k_t - v_t)^T, a_t = exp(g_t).

    q, k: [B, H, T, Dk] (L2-normalised), v: [B, H, T, Dv], beta, g: [B, H, T] (g <= 0). Returns [B, H, T, Dv].
    The DeltaNet chunk algorithm with cumulative in-chunk decays folded into the WY solve, the intra-chunk
    scores and the state carry. Float32; equals `mixerlab.ops.naive.gated_delta_rule_recurrent`.
    """
    out_dtype = v.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, beta, g = q.float(), k.float(), v.float(), beta.float(), g.float()
        batch, heads, length, dk = k.shape
        dv = v.shape[-1]
        chunk = min(chunk_size, length)
        pad = (-length) % chunk
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
        n = (length + pad) // chunk
        q, k, v = (t.reshape(batch, heads, n, chunk, -1) for t in (q, k, v))
        beta = beta.reshape(batch, heads, n, chunk, 1)
        gamma = g.reshape(batch, heads, n, chunk).cumsum(-1)  # log of the decay since the chunk start
        q = q * dk**-0.5

        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
        decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        k_beta = k * beta
        eye = torch.eye(chunk, device=q.device, dtype=q.dtype)
        a = eye + ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)
        rhs = torch.cat([v * beta, k_beta * gamma.exp()[..., None]], -1)
        uw = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)
        u, w = uw.split([dv, dk], -1)
        attn = (q @ k.transpose(-1, -2)) * decay
        q_decayed = q * gamma.exp()[..., None]
        chunk_decay = gamma[..., -1:]  # [B, H, n, 1]
        k_to_end = k * (chunk_decay - gamma).exp()[..., None]

        state = q.new_zeros(batch, heads, dk, dv)
        outputs = []
        for i in range(n):
            u_i = u[:, :, i] - w[:, :, i] @ state
            outputs.append(q_decayed[:, :, i] @ state + attn[:, :, i] @ u_i)
            state = state * chunk_decay[:, :, i, :, None].exp() + k_to_end[:, :, i].transpose(-1, -2) @ u_i
        o = torch.stack(outputs, 2).reshape(batch, heads, n * chunk, dv)[:, :, :length]
    return o.to(out_dtype)


class ShortConvolution(nn.Conv1d):
    """Causal depthwise convolution over time, then SiLU: x [B, T, C] -> [B, T, C]."""

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.transpose(1, 2))[..., : x.shape[1]]
        return F.silu(y).transpose(1, 2)


class GatedRMSNorm(nn.RMSNorm):
    """RMSNorm of the output, multiplied by SiLU of a gate (fla's FusedRMSNormGated)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x) * F.silu(gate)


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet sequence mixer.

    Args:
        d_model: width of the model (input and output).
        num_heads: heads (4).
        head_dim: key/query dimension per head (None: d_model // num_heads, 32 at width 128).
        expand_v: value dimension per head = expand_v * head_dim (2).
        conv_size: kernel of the short causal convolutions (4).
        chunk_size: tokens per chunk of the chunkwise form (64).
        norm_eps: epsilon of the gated output RMSNorm (1e-5).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        expand_v: int = 2,
        conv_size: int = 4,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        head_dim = head_dim or d_model // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.head_v_dim = head_dim * expand_v
        self.chunk_size = chunk_size
        key_dim, value_dim = num_heads * head_dim, num_heads * self.head_v_dim
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, num_heads, bias=False)
        self.b_proj = nn.Linear(d_model, num_heads, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        # decay rates as in Mamba-2 / fla: A ~ U(0, 16), dt ~ log-uniform in [1e-3, 0.1]
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(0, 16).log())
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.q_conv = ShortConvolution(key_dim, conv_size)
        self.k_conv = ShortConvolution(key_dim, conv_size)
        self.v_conv = ShortConvolution(value_dim, conv_size)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The sequence-mixing op on head-first tensors; fla's kernel variant overrides this."""
        return gated_delta_rule_chunkwise(q, k, v, beta, g, self.chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.split_heads(self.q_conv(self.q_proj(x)))
        k = self.split_heads(self.k_conv(self.k_proj(x)))
        v = self.split_heads(self.v_conv(self.v_proj(x)))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)
        g = (-self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)).transpose(1, 2)
        o = self.mix(q, k, v, beta, g)
        o = self.o_norm(o, self.split_heads(self.g_proj(x)))
        return self.o_proj(o.transpose(1, 2).reshape(batch, length, -1))
