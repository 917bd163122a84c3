"""flash-linear-attention's chunkwise delta-rule kernels as opaque PyTorch operators.

fla ships its kernels as autograd Functions behind `torch.compiler.disable`: a compiled step breaks its graph
around them, and vmap (the batched trainer runs the model under vmap over its members) has no rule for them.
Here fla's own forward and backward entry points become `torch.library` custom ops, each with a fake (shape)
function, an autograd formula and a vmap rule that folds the members into the kernel's batch (M members of
batch B are one batch of M * B for the kernel: what they compute independently). torch.compile then fuses
everything around one kernel call per layer, and no forward is recomputed for the backward.

Tensors are fla's layout: time-first q, k, v [B, T, H, D] (bfloat16 on CUDA), beta and the log decay g
[B, T, H]; scale 1/sqrt(Dk), no initial state. On CPU (fla has no CPU kernels) the PyTorch chunkwise forms
stand in, with gradients from `torch.func.vjp`, so the plumbing is testable anywhere; there the saved WY
matrix is returned as zeros of its shape, as the CPU backward recomputes instead of reading it.
"""

from __future__ import annotations

import functools

import torch

from mixerlab.ops.members import fold_members

CHUNK = 64  # fla's chunk size: the WY matrix saved for backward is [B, T, H, CHUNK]


@functools.cache
def _fla():
    """fla's forward/backward entry points, imported on first use (fla is optional: `mixerlab[fla]`)."""
    try:
        from fla.ops.delta_rule.chunk import chunk_delta_rule_bwd, chunk_delta_rule_fwd
        from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd, chunk_gated_delta_rule_fwd
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError("the fla kernels need `pip install 'mixerlab[fla]'` (fla-core) and a CUDA GPU") from err
    return chunk_delta_rule_fwd, chunk_delta_rule_bwd, chunk_gated_delta_rule_fwd, chunk_gated_delta_rule_bwd


def _contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensors]


def _wy_like(k: torch.Tensor) -> torch.Tensor:
    return k.new_zeros(*k.shape[:3], CHUNK)


# --- the PyTorch stand-ins (CPU), in fla's layout ----------------------------------------------------------

def _reference_delta(q, k, v, beta):
    from mixerlab.mixers.delta_net import delta_rule_chunkwise

    out = delta_rule_chunkwise(*(t.transpose(1, 2) for t in (q, k, v, beta)), CHUNK)
    return out.transpose(1, 2).to(v.dtype).contiguous()


def _reference_gated(q, k, v, beta, g):
    from mixerlab.mixers.gated_delta_net import gated_delta_rule_chunkwise

    out = gated_delta_rule_chunkwise(*(t.transpose(1, 2) for t in (q, k, v, beta, g)), CHUNK)
    return out.transpose(1, 2).to(v.dtype).contiguous()


# --- DeltaNet ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mixerlab::fla_delta_rule", mutates_args=())
def fla_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, T, H, Dv], the WY matrix fla's backward reads)."""
    forward = _fla()[0]
    q, k, v, beta = _contiguous(q, k, v, beta)
    o, wy, _ = forward(q=q, k=k, v=v, beta=beta, scale=k.shape[-1] ** -0.5, initial_state=None,
                       output_final_state=False)
    return o.to(v.dtype).contiguous(), wy.to(k.dtype).contiguous()


@fla_delta_rule.register_kernel("cpu")
def _(q, k, v, beta):
    return _reference_delta(q, k, v, beta), _wy_like(k)


@fla_delta_rule.register_fake
def _(q, k, v, beta):
    return v.new_empty(v.shape), k.new_empty(*k.shape[:3], CHUNK)


@torch.library.custom_op("mixerlab::fla_delta_rule_backward", mutates_args=())
def fla_delta_rule_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, wy: torch.Tensor,
                            grad_o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dbeta) of `fla_delta_rule`."""
    backward = _fla()[1]
    q, k, v, beta, wy, grad_o = _contiguous(q, k, v, beta, wy, grad_o.to(v.dtype))
    dq, dk, dv, db, _ = backward(q=q, k=k, v=v, beta=beta, A=wy, scale=k.shape[-1] ** -0.5, initial_state=None,
                                 do=grad_o, dht=None)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db.to(beta.dtype)


@fla_delta_rule_backward.register_kernel("cpu")
def _(q, k, v, beta, wy, grad_o):
    _, pull = torch.func.vjp(_reference_delta, q, k, v, beta)
    return tuple(g.contiguous() for g in pull(grad_o.to(v.dtype)))


@fla_delta_rule_backward.register_fake
def _(q, k, v, beta, wy, grad_o):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), beta.new_empty(beta.shape)


def _delta_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, output[1])
    ctx.mark_non_differentiable(output[1])


def _delta_backward(ctx, grad_o, _grad_wy):
    return fla_delta_rule_backward(*ctx.saved_tensors, grad_o.contiguous())  # copied in traced code, fusable


fla_delta_rule.register_autograd(_delta_backward, setup_context=_delta_setup)


# --- Gated DeltaNet ----------------------------------------------------------------------------------------

@torch.library.custom_op("mixerlab::fla_gated_delta_rule", mutates_args=())
def fla_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, the WY matrix, g's in-chunk cumulative sums as fla keeps them): the last two are for backward."""
    forward = _fla()[2]
    q, k, v, beta, g = _contiguous(q, k, v, beta, g.float())
    g_cum, o, wy, *_ = forward(q=q, k=k, v=v, g=g, beta=beta, scale=k.shape[-1] ** -0.5, initial_state=None,
                               output_final_state=False)
    return o.to(v.dtype).contiguous(), wy.to(k.dtype).contiguous(), g_cum.float().contiguous()


@fla_gated_delta_rule.register_kernel("cpu")
def _(q, k, v, beta, g):
    return _reference_gated(q, k, v, beta, g), _wy_like(k), g.to(torch.float32, copy=True).contiguous()


@fla_gated_delta_rule.register_fake
def _(q, k, v, beta, g):
    return v.new_empty(v.shape), k.new_empty(*k.shape[:3], CHUNK), g.new_empty(g.shape, dtype=torch.float32)


@torch.library.custom_op("mixerlab::fla_gated_delta_rule_backward", mutates_args=())
def fla_gated_delta_rule_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, wy: torch.Tensor,
    g_cum: torch.Tensor, grad_o: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dbeta, dg) of `fla_gated_delta_rule`."""
    backward = _fla()[3]
    q, k, v, beta, wy, g_cum, grad_o = _contiguous(q, k, v, beta, wy, g_cum, grad_o.to(v.dtype))
    dq, dk, dv, db, dg, *_ = backward(q=q, k=k, v=v, g=g_cum, beta=beta, A=wy, scale=k.shape[-1] ** -0.5,
                                      initial_state=None, do=grad_o, dht=None)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db.to(beta.dtype), dg.to(g.dtype)


@fla_gated_delta_rule_backward.register_kernel("cpu")
def _(q, k, v, beta, g, wy, g_cum, grad_o):
    _, pull = torch.func.vjp(_reference_gated, q, k, v, beta, g)
    return tuple(t.contiguous() for t in pull(grad_o.to(v.dtype)))


@fla_gated_delta_rule_backward.register_fake
def _(q, k, v, beta, g, wy, g_cum, grad_o):
    return tuple(t.new_empty(t.shape) for t in (q, k, v, beta, g))


def _gated_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _gated_backward(ctx, grad_o, _grad_wy, _grad_g_cum):
    return fla_gated_delta_rule_backward(*ctx.saved_tensors, grad_o.contiguous())


fla_gated_delta_rule.register_autograd(_gated_backward, setup_context=_gated_setup)


# --- vmap: members folded into the kernel's batch ----------------------------------------------------------

def _folding_rule(op):
    """The vmap rule of `op`: one call on the folded batch, every output split back into members."""

    def rule(info, in_dims, *tensors: torch.Tensor):
        outputs = op(*fold_members(info, in_dims, *tensors))
        return tuple(t.reshape(info.batch_size, -1, *t.shape[1:]) for t in outputs), (0,) * len(outputs)

    return rule


for _op in (fla_delta_rule, fla_delta_rule_backward, fla_gated_delta_rule, fla_gated_delta_rule_backward):
    _op.register_vmap(_folding_rule(_op))
