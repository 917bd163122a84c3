"""Per-step recurrences of DeltaNet and Gated DeltaNet: slow, obvious, and the ground truth for every fast form.

Shapes are head-first: q, k `[B, H, T, Dk]`, v `[B, H, T, Dv]`, beta and g `[B, H, T]`. The state is kept as
`S` of shape `[B, H, Dk, Dv]` (the transpose of the paper's `d_v x d_k`), and outputs use the state after
the update, as fla does. Everything is computed in float32.
"""

from __future__ import annotations

import torch


def gated_delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = a_t S_{t-1} + k_t beta_t (v_t - a_t S_{t-1}^T k_t)^T,  o_t = scale * S_t^T q_t,  a_t = exp(g_t).

    With g = None this is DeltaNet. Returns (o `[B, H, T, Dv]`, final state `[B, H, Dk, Dv]`).
    """
    out_dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    batch, heads, length, dk = k.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    state = q.new_zeros(batch, heads, dk, dv) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(length):
        if g is not None:
            state = state * g[:, :, t].float().exp()[..., None, None]
        k_t, q_t = k[:, :, t], q[:, :, t]
        prediction = torch.einsum("bhkv,bhk->bhv", state, k_t)
        error = prediction - v[:, :, t]  # u_t = S_{t-1} k_t - v_t in the paper's notation
        state = state - beta[:, :, t, None, None] * k_t[..., None] * error[..., None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q_t) * scale)
    return torch.stack(outputs, 2).to(out_dtype), state


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T (state transposed), o_t = scale * S_t^T q_t."""
    return gated_delta_rule_recurrent(q, k, v, beta, None, scale, initial_state)
