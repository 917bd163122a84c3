"""Run a batch-first kernel under `torch.vmap` by folding the vmapped dimension into the kernel's batch.

The batched trainer runs the whole model under vmap over its members. Triton kernels (fla's) have no vmap
batching rule, so a mixer calling one cannot be batched. `fold_vmap(kernel)` wraps the kernel in an
autograd.Function whose vmap rule moves the member dimension into dimension 0 (the kernel's batch), calls
the kernel once on all members and splits the result back; for the kernel, M members of batch B are one
batch of M * B, which is exactly what the members compute independently.

Backward recomputes the kernel's forward under autograd and differentiates that (the kernel library's own
backward then runs). It costs one more forward of the op, and depends on nothing inside the library.
"""

from __future__ import annotations

from typing import Callable

import torch

Kernel = Callable[..., torch.Tensor]


def fold_vmap(kernel: Kernel) -> Kernel:
    """`kernel(*tensors) -> tensor`, batch-first in every argument and the result, made vmap-able."""

    class Folded(torch.autograd.Function):
        @staticmethod
        def forward(*inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return kernel(*inputs)

        @staticmethod
        def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
            inputs = [t.detach().requires_grad_(needs) for t, needs in zip(ctx.saved_tensors, ctx.needs_input_grad)]
            wanted = [t for t in inputs if t.requires_grad]
            with torch.enable_grad():
                out = kernel(*inputs)
            grads = iter(torch.autograd.grad(out, wanted, grad))
            return tuple(next(grads) if t.requires_grad else None for t in inputs)

        @staticmethod
        def vmap(info, in_dims, *inputs: torch.Tensor):  # type: ignore[override]
            members = info.batch_size
            folded = []
            for tensor, dim in zip(inputs, in_dims):
                tensor = tensor.movedim(dim, 0) if dim is not None else tensor.expand(members, *tensor.shape)
                folded.append(tensor.reshape(members * tensor.shape[1], *tensor.shape[2:]))
            out = Folded.apply(*folded)
            return out.reshape(members, -1, *out.shape[1:]), 0

    Folded.__name__ = f"Folded_{getattr(kernel, '__name__', 'kernel')}"
    return Folded.apply
